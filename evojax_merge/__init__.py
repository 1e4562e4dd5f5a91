"""evojax_merge: JAX-native evolutionary, black-box merging of LoRA-adapted LLMs."""

from evojax_merge.logs import drop_torch_advice

__version__ = "0.1.0"

drop_torch_advice()  # before anything imports transformers: its "PyTorch was not found" line is noise here
