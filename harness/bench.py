"""``policylong bench``: benchmarks that print one JSON line per setting, then a short table.

Speed and memory are measured side by side with their baseline in the same run (these
machines are noisy); quote ratios, not absolute numbers.
"""
from __future__ import annotations

import gc
import json
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

    from harness.scoring import naive_scores, score_tokens

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
