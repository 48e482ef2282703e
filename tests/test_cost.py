"""The cost model (``policylong cost``): FLOPs against torch's own count, counts that keep the
budget, predictions that follow their inputs, the validation's judgement and the command."""
import json
import math

import pytest
import torch

from harness.config import load_spec
from harness.tools import cost as C


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from harness.training.model_io import tiny_qwen2_config

    cfg = tiny_qwen2_config(300, 64, 2, 4, 2, 128, 512, 10000.0, 0)
    d = tmp_path_factory.mktemp("tiny")
    cfg.save_pretrained(d)
    torch.manual_seed(0)
    return d, AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def test_forward_flops_match_torchs_count(tiny):
    """torch's FlopCounterMode on the model's forward (eager attention: QKᵀ and AV over every
    pair) equals the shape's matmuls + head + attention over all n² pairs; ``forward`` counts
    the causal half (what FlashAttention computes)."""
    from torch.utils.flop_counter import FlopCounterMode

    d, model = tiny
    shape = C.Shape.of(d)
    rows, n = 3, 200
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=torch.randint(1, 300, (rows, n)))
    full_attention = shape.forward(rows, n, rows * n) + rows * shape.attention(n, n / 2)
    assert fc.get_total_flops() == pytest.approx(full_attention, rel=1e-9)
    # and the head applied at fewer positions costs that much less
    assert shape.forward(rows, n, 0) == pytest.approx(
        shape.forward(rows, n, rows * n) - 2 * 300 * 64 * rows * n)


def test_known_shapes_and_clear_errors():
    s = C.Shape.of("Qwen/Qwen2.5-3B")
    assert 2.7e9 < s.matmul_params < 2.8e9       # 3.09B parameters, 0.31B of them embeddings
    with pytest.raises(ValueError, match="no shape known for it"):
        C.Shape.of("org/unknown-model")


def _paper():
    return load_spec("runs/paper/qwen2.5-3b-128k.yaml")


def test_assumed_counts_fill_the_budget_and_follow_the_accept_rate():
    spec, a = _paper(), C.Assumptions()
    T, budget = spec.stages.target_length, spec.stages.tokens_per_stage
    e0 = C.assumed_counts(spec, "entropylong", 0, a, 1e7)
    p3 = C.assumed_counts(spec, "policylong", 3, a, 1e7)
    assert e0.rows == math.ceil(budget / T)
    # the accepted contexts fill T at 0.83: one root per group
    assert e0.roots == pytest.approx(budget / T)
    # at PolicyLong's stage-3 rate a root brings fewer contexts: more roots for the same budget
    assert p3.roots > 2 * e0.roots
    assert C.assumed_counts(spec, "standard", 0, a, 1e7).candidates == 0
    flops = {m: sum(C.phase_flops(spec, C.Shape.of("Qwen/Qwen2.5-3B"), c, 1e7).values())
             for m, c in (("e", e0), ("p", p3))}
    assert flops["p"] > flops["e"]


def test_prefix_cache_lowers_predicted_verification():
    spec = _paper()
    c = C.assumed_counts(spec, "entropylong", 0, C.Assumptions(), 1e7)
    c.distinct_chunks = c.candidates / 14          # each chunk retrieved by 14 roots
    shape = C.Shape.of("Qwen/Qwen2.5-3B")

    def verify(mb):
        s = spec.model_copy(update={"screening": spec.screening.model_copy(
            update={"prefix_cache_mb": mb})})
        return C.phase_flops(s, shape, c, 1e7)["verify"]

    on, off = verify(512), verify(0)
    assert on < off


def test_validation_judges_within_twenty_percent():
    rows = [{"method": "m", "stage": 0, "phase": p, "seconds_here": s}
            for p, s in (("screen", 10.0), ("verify", 10.0), ("train", 0.5))]
    measured = {("m", 0, "screen"): 9.0, ("m", 0, "verify"): 15.0, ("m", 0, "train"): 0.2}
    v = {r["phase"]: r for r in C.validation(rows, measured)}
    assert v["screen"]["within"] is True and v["verify"]["within"] is False
    assert v["train"]["within"] is None            # under a second: listed, not judged
    assert v["verify"]["ratio"] == pytest.approx(10 / 15)


def test_cost_command_prints_gpu_hours_per_method(capsys):
    from harness.cli import main

    assert main(["cost", "runs/paper/qwen2.5-3b-128k.yaml", "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert {r["method"] for r in rows} == {"standard", "nextlong", "entropylong", "policylong"}
    assert all(r["counts"] == "assumed" and r["gpu_seconds"] >= 0 for r in rows)
    table = [x for x in out.splitlines() if x.startswith("| policylong")]
    assert table and "GPU-hours" in out and "[assumed]" in out
    gpu = {m: sum(r["gpu_seconds"] for r in rows if r["method"] == m) for m in
           ("standard", "policylong")}
    assert gpu["policylong"] > gpu["standard"] > 0
    # a faster GPU: proportionally fewer hours
    assert main(["cost", "runs/paper/qwen2.5-3b-128k.yaml", "--no-calibrate",
                 "--gpu-tflops", "1978"]) == 0
    rows2 = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert sum(r["gpu_seconds"] for r in rows2) == pytest.approx(
        sum(r["gpu_seconds"] for r in rows) / 2)
