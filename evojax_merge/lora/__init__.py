"""LoRA adapters as stacked JAX arrays: pytrees, the PEFT pool loader, and PEFT export."""

from evojax_merge.lora.adapter import PROJECTIONS, LoraAdapter, LoraStack, module_path
from evojax_merge.lora.export import peft_state_dict, save_peft_adapter
from evojax_merge.lora.pool import AdapterFile, LoraPool, load_pool, read_adapter, resolve_adapter_dirs

__all__ = [
    "PROJECTIONS",
    "AdapterFile",
    "LoraAdapter",
    "LoraPool",
    "LoraStack",
    "load_pool",
    "module_path",
    "peft_state_dict",
    "read_adapter",
    "resolve_adapter_dirs",
    "save_peft_adapter",
]
