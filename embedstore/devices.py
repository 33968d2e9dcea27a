"""What this process can compute on: the FAISS build and its GPUs, torch and CUDA, native bf16.

One place for the questions `embedstore info`, the encoders (precision), the index code (GPU exact
search) and the GPU smoke script ask, so they never disagree.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from embedstore.errors import OutOfMemory


def faiss_gpus() -> int:
    """GPUs FAISS can use: 0 with the CPU build (which has no GPU code) or when none is visible."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:  # a GPU build on a machine whose driver cannot be loaded
        return 0


def bf16_native() -> bool:
    """True on a CUDA GPU with bf16 in hardware (Ampere and newer). Emulated bf16 (older GPUs) does not
    count: torch's default answer includes emulation, which runs slower than fp32 there."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def runtime() -> dict:
    """The facts `embedstore info` prints: faiss version and build, GPUs it sees, torch and CUDA."""
    import faiss
    import torch

    cuda = torch.cuda.is_available()
    return {
        "faiss_version": faiss.__version__,
        "faiss_build": "gpu" if hasattr(faiss, "StandardGpuResources") else "cpu",
        "faiss_cuvs": hasattr(faiss, "GpuIndexCagra"),
        "faiss_gpus": faiss_gpus(),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "bf16_native": bf16_native(),
    }


@contextlib.contextmanager
def out_of_memory_as_error(what: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory inside the block into OutOfMemory (503 in the service, one line on the
    CLI) after freeing torch's cached blocks, so the next request or batch starts clean."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise OutOfMemory(f"out of GPU memory on {what}; lower --batch-size (or the upload's frames), "
                          "or use --device cpu") from None
