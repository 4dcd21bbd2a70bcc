"""Whether a device computes bfloat16 natively, and a bfloat16 autocast only where it does.

On a CPU without bfloat16 matrix instructions, bfloat16 is emulated and slower than float32,
so every user of bfloat16 in editspec asks `native_bfloat16` first.
"""
from __future__ import annotations

import contextlib


def native_bfloat16(device="cpu") -> bool:
    """Whether `device` has bfloat16 matrix arithmetic (oneDNN's answer on CPU; CUDA's on GPU).

    >>> isinstance(native_bfloat16("cpu"), bool)
    True
    """
    import torch

    kind = torch.device(device).type
    try:
        if kind == "cpu":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if kind == "cuda":
            return bool(torch.cuda.is_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    return False


def bfloat16_autocast(device, enabled: bool):
    """A bfloat16 autocast on `device` when `enabled`, else a context that changes nothing.

    >>> with bfloat16_autocast("cpu", False):
    ...     pass
    """
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
