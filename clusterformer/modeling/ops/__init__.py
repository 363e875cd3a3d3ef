"""Ops of the model core. They import and run everywhere: compiled kernels when built, pure PyTorch
otherwise."""

from .ms_deform_attn import (
    MSDeformAttn,
    extension_available,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    reference_implementation,
    reference_implementation_forced,
)

__all__ = [
    "MSDeformAttn",
    "extension_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "reference_implementation",
    "reference_implementation_forced",
]
