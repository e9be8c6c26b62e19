"""elf_fast: ELF (Embedded Language Flows) with fused C++/CUDA kernels.

``elf_fast.Generator`` samples text from a checkpoint (the built-in model with
``Generator.from_pretrained()``); ``elf_fast.ops`` holds the fused operations (kernel or
reference, picked per device); ``elf_fast.reference`` their pure-PyTorch definitions.
"""

from elf_fast import ops, reference
from elf_fast.generator import Generator
from elf_fast.ops import (
    flow_step,
    kernel_available,
    linear_cross_entropy,
    selfcond_proj,
    unembed_argmax,
)

__version__ = "0.1.0"

__all__ = [
    "Generator",
    "ops",
    "reference",
    "flow_step",
    "kernel_available",
    "linear_cross_entropy",
    "selfcond_proj",
    "unembed_argmax",
]
