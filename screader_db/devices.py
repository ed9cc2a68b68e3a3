"""The one probe for a CUDA GPU, shared by the index's search and the language models."""

from __future__ import annotations


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU.

    torch is imported only on machines with an NVIDIA driver (or ``CUDA_VISIBLE_DEVICES`` set),
    so the probe costs nothing elsewhere.

    Returns
    -------
    bool
        False without torch, a driver or a GPU.
    """
    import os

    if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
