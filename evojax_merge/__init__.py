"""evojax_merge: JAX-native evolutionary, black-box merging of LoRA-adapted LLMs."""

__version__ = "0.1.0"
