"""The one-GPU check behind tests/gpu/run.sh (never in CI).

    gpu_check.py train WORK      random-init Qwen2 (hidden 512, 4 layers, vocab 32K), one bf16
                                 training stage per length (8K, then 32K extended from the 8K
                                 checkpoint by a RoPE-base override) through
                                 harness.training.train_stage on stage datasets written by
                                 harness.construction.stage_data; prints attention implementation,
                                 tokens/s and peak memory per length
                                 (the last checkpoint's path goes to WORK/last_checkpoint)
    gpu_check.py generate CKPT   vLLM greedy generation from CKPT at its full length
    gpu_check.py cost WORK       the cost model on this GPU: calibrates (harness.tools.cost,
                                 bf16) on the base model of ``train``, prints the achieved
                                 model-FLOPs utilisation against ``--peak-tflops`` beside the
                                 MFU ``policylong cost`` assumes, and predicts each training
                                 stage's tokens/s from its FLOPs and the calibration; fails
                                 when a prediction is more than 20 % off the measured rate

The steps are short (default 2 per length: the first includes CUDA warm-up, so the last step's
tokens/s is the one printed). ``--allow-cpu`` with toy sizes runs the same path on a CPU machine,
to check the script itself. Exits non-zero on any failure.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

EXTENDED_ROPE_THETA = 1_000_000.0


def _tokenizer(out: Path) -> Path:
    """A small Qwen2-pipeline tokenizer trained on sandbox text (a few seconds, no hub)."""
    import itertools

    from harness.sandbox import world as W
    from harness.sandbox.tokenizer import train_tokenizer

    texts = list(itertools.islice(W.pretraining_texts(W.WorldSpec(seed=7), 0, 4), 600))
    return train_tokenizer(texts, 1024, out, model_max_length=1 << 20)


def _base_model(out: Path, args) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.training.model_io import save_checkpoint, tiny_qwen2_config

    tok = AutoTokenizer.from_pretrained(str(_tokenizer(out.with_name("tokenizer"))))
    heads = max(1, args.hidden // 64)                # head size 64
    cfg = tiny_qwen2_config(args.vocab, args.hidden, args.layers, heads, max(1, heads // 4),
                            args.hidden * 11 // 4, args.lengths[0], 10000.0, tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return save_checkpoint(model, tok, out)


def _stage_dataset(out: Path, length: int, rows: int, vocab: int, seed: int) -> Path:
    """``rows`` packed rows of random-token documents (a quarter to a half row each)."""
    import numpy as np

    from harness.construction.stage_data import Group, pack_groups, write_stage_dataset

    rng = np.random.default_rng(seed)
    groups = []
    for i in range(4 * rows + 4):
        n = int(rng.integers(length // 4, length // 2))
        groups.append(Group(rng.integers(1, vocab, n).tolist(), {"root_id": f"r{i}"}))
    ids, gi, placed = pack_groups(groups, length, pad_id=0, token_budget=rows * length)
    assert len(ids) == rows, (len(ids), rows)
    return write_stage_dataset(out, ids, gi, placed, {"method": "gpu_check"})


class _Rates:
    def __init__(self):
        self.rows: list[dict] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append({"step": step, **metrics})


def train(args) -> int:
    import torch

    from harness.config import ContextExtensionSpec, TrainSpec
    from harness.training.stage import best_attn_implementation, train_stage

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device (pass --allow-cpu to run the toy path on CPU)", file=sys.stderr)
        return 2
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        print(f"{work} is not empty: give a new or empty folder", file=sys.stderr)
        return 2
    attn = best_attn_implementation()
    print(f"attn_implementation: {attn}"
          + ("" if attn == "flash_attention_2" else " (no GPU, or flash_attn missing or too old)"))
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    checkpoint = _base_model(work / "base", args)
    # the tokenizer's ids only: vLLM rejects prompt ids past the tokenizer's vocabulary
    from transformers import AutoTokenizer
    n_tok = len(AutoTokenizer.from_pretrained(str(checkpoint)))
    measured = []
    for i, length in enumerate(args.lengths):
        ds = _stage_dataset(work / f"data-{length}", length, args.steps, n_tok, seed=i)
        spec = TrainSpec(lr=1e-4, warmup_ratio=0.0, batch_tokens=length, micro_batch=1,
                         loss_block=2048, gradient_checkpointing=args.gradient_checkpointing)
        ext = None if i == 0 else ContextExtensionSpec(rope_theta=EXTENDED_ROPE_THETA)
        rates = _Rates()
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        checkpoint = train_stage(checkpoint, ds, spec, work / f"stage-{length}", tracker=rates,
                                 extension=ext, progress=False, attn_implementation=attn)
        wall = time.perf_counter() - t0
        peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda
                else "not measured on CPU")
        last = rates.rows[-1]
        losses = [r["train/loss"] for r in rates.rows]
        print(f"length {length}: {len(rates.rows)} steps, loss "
              f"{' -> '.join(f'{x:.3f}' for x in losses)}, "
              f"{last['train/tokens_per_s']:,.0f} tokens/s (last step), "
              f"peak memory {peak}, stage wall {wall:.1f} s")
        cfg = json.loads((checkpoint / "config.json").read_text())
        assert cfg["max_position_embeddings"] >= length, cfg["max_position_embeddings"]
        measured.append({"length": length, "tokens_per_s": last["train/tokens_per_s"]})
    (work / "train_rates.json").write_text(json.dumps(measured))
    (work / "last_checkpoint").write_text(str(checkpoint))
    print(f"checkpoint: {checkpoint}")
    return 0


def generate(args) -> int:
    import torch

    from harness.evaluation.vllm_engine import make_engine

    ckpt = Path(args.checkpoint)
    cfg = json.loads((ckpt / "config.json").read_text())
    max_len = cfg["max_position_embeddings"]
    kwargs = {"gpu_memory_utilization": 0.5} if torch.cuda.is_available() else {}
    t0 = time.perf_counter()
    llm = make_engine(str(ckpt), max_model_len=max_len, **kwargs)
    print(f"vLLM engine start: {time.perf_counter() - t0:.1f} s, "
          f"dtype {llm.llm_engine.model_config.dtype}, "
          f"max_model_len {llm.llm_engine.model_config.max_model_len}")
    from vllm import SamplingParams

    n_prompt = min(args.prompt_tokens, max_len - args.new_tokens)
    n_vocab = len(llm.get_tokenizer())
    prompt = [(7 * i) % (n_vocab - 1) + 1 for i in range(n_prompt)]
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True,
                            detokenize=False)   # the model's vocabulary exceeds the tokenizer's
    t0 = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    gen = list(out[0].outputs[0].token_ids)
    print(f"vLLM greedy: {n_prompt} prompt tokens -> {gen} in {time.perf_counter() - t0:.1f} s")
    rope = dict(getattr(llm.llm_engine.model_config.hf_config, "rope_parameters", None) or {})
    print(f"vLLM rope_parameters: {rope}")
    assert llm.llm_engine.model_config.max_model_len == max_len
    assert rope.get("rope_theta") == cfg["rope_parameters"]["rope_theta"], rope
    assert len(gen) == args.new_tokens, gen
    return 0


def cost(args) -> int:
    """The cost model against this GPU: calibrate on ``train``'s base model at its first
    length, then predict every trained length's tokens/s from FLOPs alone."""
    import torch

    from harness.tools.cost import MFU, Shape, calibrate

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device (pass --allow-cpu to run the toy path on CPU)", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.work)
    rates = json.loads((work / "train_rates.json").read_text())
    base = work / "base"
    shape = Shape.of(base)
    first = rates[0]["length"]
    cal = calibrate(base, min(2048, first), first, None, 16, device=device,
                    dtype="bfloat16" if device == "cuda" else "float32")
    peak = args.peak_tflops * 1e12
    print(f"calibration: {json.dumps(cal.detail)}")
    print(f"achieved: forward {cal.forward / 1e12:.1f} TFLOP/s ({cal.forward / peak:.1%} of "
          f"peak), train {cal.train / 1e12:.1f} TFLOP/s ({cal.train / peak:.1%}); "
          f"policylong cost assumes {MFU['verify']:.0%} / {MFU['train']:.0%} for a 3B+ model")
    bad = 0
    for r in rates:
        L = r["length"]
        per_token = 3 * shape.forward(1, L, L) / L
        predicted = cal.train / per_token
        ratio = predicted / r["tokens_per_s"]
        ok = abs(ratio - 1) <= 0.2
        bad += not ok
        print(f"length {L}: predicted {predicted:,.0f} tokens/s, measured "
              f"{r['tokens_per_s']:,.0f} ({ratio:.2f}×) {'ok' if ok else 'OFF BY MORE THAN 20 %'}")
    return 1 if bad else 0


def _lengths(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", allow_abbrev=False)
    t.add_argument("work")
    t.add_argument("--lengths", type=_lengths, default=[8192, 32768])
    t.add_argument("--steps", type=int, default=2, help="optimizer steps per length")
    t.add_argument("--hidden", type=int, default=512)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--vocab", type=int, default=32000)
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--allow-cpu", action="store_true", help="toy sizes on a CPU machine")
    g = sub.add_parser("generate", allow_abbrev=False)
    g.add_argument("checkpoint")
    g.add_argument("--prompt-tokens", type=int, default=20000)
    g.add_argument("--new-tokens", type=int, default=16)
    c = sub.add_parser("cost", allow_abbrev=False)
    c.add_argument("work")
    c.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the GPU's dense bf16 peak (default: H100 SXM)")
    c.add_argument("--allow-cpu", action="store_true", help="toy sizes on a CPU machine")
    args = p.parse_args(argv)
    return {"train": train, "generate": generate, "cost": cost}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
