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
                 dtype: str = "auto", seed: int = 0):
        from harness.evaluation.vllm_engine import make_engine

        self.llm = make_engine(str(model_path), max_model_len=max_model_len, dtype=dtype,
                               seed=seed)
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
        outs = self.llm.generate([{"prompt_token_ids": list(x)} for x in prompts], params,
                                 use_tqdm=False)
        if progress:
            progress(len(prompts))
        return [list(o.outputs[0].token_ids) for o in outs]


def make_backend(name: str, model_path: str | Path, max_model_len: int,
                 stop_ids: Sequence[int], dtype: str = "auto", seed: int = 0) -> Greedy:
    if name == "vllm":
        return VLLMGreedy(model_path, max_model_len, stop_ids, dtype, seed)
    if name == "hf":
        return HFGreedy(model_path, stop_ids, dtype)
    raise ValueError(f"unknown backend {name!r} (vllm, hf)")
