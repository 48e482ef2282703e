"""Greedy generation for evaluation: one vLLM engine, or transformers ``generate`` as fallback.

Both take token ids (the evaluation core tokenizes once, so both backends see the same ids) and
return the generated ids as produced (the core cuts them with ``cut_at_stop`` and decodes).
Decoding is pure greedy (temperature 0, no repetition penalty, whatever the model's
``generation_config.json`` says), so the two backends agree token for token up to numerical
ties. A benchmark protocol that samples (LongBench-v2's official temperature 0.1) passes
``temperatures`` and ``seeds``: plain temperature sampling (top-p 1, no top-k, no penalty, as
the OpenAI API defaults that the official script relies on), seeded per prompt so that a rerun
gives the same outputs on the same backend (the two backends' random streams differ).

``VLLMGreedy`` starts worker processes: build it under ``if __name__ == "__main__":`` (the
``policylong`` entry point is), once, at the largest length; every length runs through it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol, Sequence

Progress = Callable[[int], None]


class Greedy(Protocol):
    name: str

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: Sequence[int],
                 progress: Progress | None = None, temperatures: Sequence[float] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[list[int]]: ...


def stop_token_ids(model_path: str | Path, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's and those of ``generation_config.json``."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = Path(model_path) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return sorted(ids)


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """``ids`` up to (not including) the first stop id."""
    stops = set(stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return list(ids[:i])
    return list(ids)


def _torch_dtype(dtype: str, on_gpu: bool):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return getattr(torch, dtype)


class HFGreedy:
    """transformers ``generate``, greedy, one prompt at a time (no padding, so no numerical
    drift from it)."""

    name = "hf"

    def __init__(self, model_path: str | Path, stop_ids: Sequence[int], dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=_torch_dtype(dtype, self.device == "cuda"),
            attn_implementation="sdpa", use_safetensors=True).to(self.device).eval()
        self.stop_ids = list(stop_ids)

    def generate(self, prompts, max_new_tokens, progress=None, temperatures=None, seeds=None):
        import torch
        from transformers import GenerationConfig

        out = []
        temps = temperatures or [0.0] * len(prompts)
        seeds = seeds or [None] * len(prompts)
        for ids, n, t, seed in zip(prompts, max_new_tokens, temps, seeds, strict=True):
            sample = {"do_sample": True, "temperature": float(t), "top_p": 1.0, "top_k": 0} \
                if t and t > 0 else {"do_sample": False}
            cfg = GenerationConfig(max_new_tokens=int(n), eos_token_id=self.stop_ids or None,
                                   pad_token_id=self.stop_ids[0] if self.stop_ids else 0,
                                   **sample)
            if sample["do_sample"]:
                torch.manual_seed(0 if seed is None else int(seed))
            x = torch.tensor([ids], device=self.device)
            with torch.no_grad():
                y = self.model.generate(x, attention_mask=torch.ones_like(x),
                                        generation_config=cfg)
            out.append(y[0, len(ids):].tolist())
            if progress:
                progress(1)
        return out


class VLLMGreedy:
    """One vLLM engine (``harness.evaluation.vllm_engine.make_engine``) for every length."""

    name = "vllm"

    def __init__(self, model_path: str | Path, max_model_len: int, stop_ids: Sequence[int],
                 dtype: str = "auto", seed: int = 0, tensor_parallel_size: int = 1):
        from harness.evaluation.vllm_engine import CallerProcess, make_engine

        self.caller = CallerProcess()
        self.llm = make_engine(str(model_path), max_model_len=max_model_len, dtype=dtype,
                               seed=seed, tensor_parallel_size=tensor_parallel_size)
        self.stop_ids = list(stop_ids)

    def generate(self, prompts, max_new_tokens, progress=None, temperatures=None, seeds=None):
        from vllm import SamplingParams

        temps = temperatures or [0.0] * len(prompts)
        seeds = seeds or [None] * len(prompts)
        # top-p 1 and top-k off are SamplingParams' defaults (as the OpenAI API's)
        params = [SamplingParams(temperature=float(t), seed=None if not t or s is None
                                 else int(s), max_tokens=int(n), detokenize=False,
                                 stop_token_ids=self.stop_ids)
                  for n, t, s in zip(max_new_tokens, temps, seeds, strict=True)]
        from harness.evaluation.vllm_engine import rng_kept

        with rng_kept():
            outs = self.llm.generate([{"prompt_token_ids": list(x)} for x in prompts], params,
                                     use_tqdm=False)
        if progress:
            progress(len(prompts))
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        """Stop the engine now (its process, or in-process on CPU its KV cache and weights),
        not whenever the garbage collector gets to it: the next checkpoint's engine starts
        beside nothing; then put back what it changed in this process (``CallerProcess``)."""
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
            self.caller.restore()


def _dp_worker(conn, env: dict, kwargs: dict) -> None:
    """One data-parallel engine in its own process: build it, then answer ``generate`` calls
    (``(prompts, max_new_tokens, temperatures, seeds)``) until sent None."""
    import os

    os.environ.update(env)
    try:
        engine = VLLMGreedy(**kwargs)
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            try:
                conn.send(("ok", engine.generate(*job)))
            except Exception as e:  # noqa: BLE001
                conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        # a multiprocessing child ends with os._exit (no atexit): stop the engine's own
        # processes here, or they outlive it holding the parent's pipes
        engine.close()


class DataParallelVLLM:
    """``size`` vLLM engines, each in its own process on its own ``tensor_parallel_size``
    GPUs (``CUDA_VISIBLE_DEVICES``; on CPU each takes a share of the cores): every
    ``generate`` splits the prompts round-robin between them and merges the outputs in the
    prompts' order, so results do not depend on the split (greedy, or seeded per prompt).
    vLLM's ``LLM`` refuses ``data_parallel_size > 1`` in one process."""

    name = "vllm"

    def __init__(self, size: int, model_path: str | Path, max_model_len: int,
                 stop_ids: Sequence[int], dtype: str = "auto", seed: int = 0,
                 tensor_parallel_size: int = 1):
        import multiprocessing as mp
        import os

        import torch

        from harness.fileio import threads_each

        ctx = mp.get_context("spawn")
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            gpus = [g.strip() for g in visible.split(",") if g.strip()]
        self.size, self.conns, self.procs = size, [], []
        threads = threads_each(size)
        for rank in range(size):
            env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
            if gpus:
                mine = gpus[rank * tensor_parallel_size:(rank + 1) * tensor_parallel_size]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_dp_worker, args=(child, env, dict(
                model_path=str(model_path), max_model_len=max_model_len, stop_ids=list(stop_ids),
                dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size)),
                daemon=False)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for rank, conn in enumerate(self.conns):
            status, msg = conn.recv()
            if status != "ready":
                self.close()
                raise RuntimeError(f"data-parallel engine {rank} failed to start: {msg}")

    def generate(self, prompts, max_new_tokens, progress=None, temperatures=None, seeds=None):
        n = len(prompts)
        temps = list(temperatures) if temperatures is not None else [0.0] * n
        seeds = list(seeds) if seeds is not None else [None] * n
        shards = [list(range(r, n, self.size)) for r in range(self.size)]
        for conn, idx in zip(self.conns, shards):
            conn.send(([list(prompts[i]) for i in idx], [max_new_tokens[i] for i in idx],
                       None, [temps[i] for i in idx], [seeds[i] for i in idx]))
        out: list = [None] * n
        for rank, (conn, idx) in enumerate(zip(self.conns, shards)):
            status, res = conn.recv()
            if status != "ok":
                raise RuntimeError(f"data-parallel engine {rank}: {res}")
            for i, r in zip(idx, res):
                out[i] = r
        if progress:
            progress(n)
        return out

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        self.conns, self.procs = [], []

    def __del__(self):
        if getattr(self, "procs", None):
            self.close()


def make_backend(name: str, model_path: str | Path, max_model_len: int,
                 stop_ids: Sequence[int], dtype: str = "auto", seed: int = 0,
                 tensor_parallel_size: int = 1, data_parallel_size: int = 1) -> Greedy:
    if name == "vllm":
        from harness.evaluation.vllm_engine import check_gpus

        check_gpus(tensor_parallel_size, data_parallel_size)
        if data_parallel_size > 1:
            return DataParallelVLLM(data_parallel_size, model_path, max_model_len, stop_ids,
                                    dtype, seed, tensor_parallel_size)
        return VLLMGreedy(model_path, max_model_len, stop_ids, dtype, seed,
                          tensor_parallel_size)
    if name == "hf":
        if tensor_parallel_size > 1 or data_parallel_size > 1:
            raise ValueError("tensor/data parallel evaluation needs the vllm backend")
        return HFGreedy(model_path, stop_ids, dtype)
    raise ValueError(f"unknown backend {name!r} (vllm, hf)")
