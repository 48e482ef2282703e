"""A micro comparison end to end: construct → train → probe for every method, the report,
MLflow parent/child runs, and a second invocation that does no work."""
import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import SMALL_SANDBOX

REPO = Path(__file__).resolve().parents[1]


def micro(data: dict, tmp_path) -> dict:
    """A spec (or study) mapping shrunk to the micro comparison: 2 stages of 4K tokens at 1K,
    on the small sandbox world."""
    data["output_dir"] = str(tmp_path / "out")
    data["sandbox"] = dict(SMALL_SANDBOX)
    data["stages"] = {"count": 2, "tokens_per_stage": 4 * 1024, "target_length": 1024,
                      "heldout_fraction": 0.3}
    data["screening"]["window"] = 512
    data["retrieval"]["top_k"] = 4
    data["train"].update({"batch_tokens": 2048, "micro_batch": 2})
    data["context_extension"] = {"rope_theta": 20000.0, "max_position_embeddings": 1024}
    data["eval"] = {"lengths": [512, 1024], "samples_per_task": 4,
                    "benchmarks": [{"name": "probe"}]}
    data["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return data


def micro_spec_file(tmp_path, sandbox_root) -> Path:
    data = micro(yaml.safe_load((REPO / "runs" / "smoke.yaml").read_text()), tmp_path)
    p = tmp_path / "micro.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.slow
def test_micro_compare_end_to_end_and_noop_rerun(tmp_path, monkeypatch, small_sandbox):
    from harness.experiments.compare import compare
    from harness.config import load_spec
    from harness.experiments.report import from_mlflow
    from harness.tracking import Tracking

    monkeypatch.setenv("POLICYLONG_SANDBOX_DIR", str(small_sandbox.parent))
    spec = load_spec(micro_spec_file(tmp_path, small_sandbox.parent))
    md = compare(spec)
    text = md.read_text()
    for label in ("base", "standard", "nextlong", "entropylong", "policylong"):
        assert f"| {label} |" in text
    assert (md.parent / "plots" / "score_probe.png").exists()
    assert (md.parent / "report.html").read_text().count("data:image/png;base64") >= 2
    results = json.loads((md.parent / "results.json").read_text())
    for label in ("standard", "nextlong", "entropylong", "policylong"):
        assert len(results["rows"][label]["stages"]) == 2
    assert "loss_gap_probe" in results["rows"]["policylong"]["stages"][1]
    # a fair experiment: every method trained on the same loss-carrying tokens per stage
    for k in range(2):
        tokens = {label: results["rows"][label]["stages"][k]["loss_tokens"]
                  for label in ("standard", "nextlong", "entropylong", "policylong")}
        assert len(set(tokens.values())) == 1, tokens
    manifests = [json.loads(p.read_text()) for p in Path(spec.output_dir).rglob(
        "dataset/manifest.json")]
    assert len(manifests) == 8
    assert len({m["config_hash"] for m in manifests}) == 8       # methods x stages
    assert all(m["roots_repeated"] == 0 for m in manifests)
    for title in ("loss-carrying tokens", "Verification", "out of sample", "Cross-scoring"):
        assert title in text, title
    for key in ("loss_tokens", "pad_tokens", "verify_precision", "loss_gap_frontier_entering",
                "loss_gap_frontier"):
        assert f" {key} " in text, key
    # frontier gaps are measured on held-out groups, by the entering and leaving checkpoints
    st = results["rows"]["entropylong"]["stages"][0]
    assert st["frontier_groups"] > 0
    assert st["loss_gap_frontier"] != st["loss_gap_frontier_entering"]
    assert set(results["cross"]["entropylong"]["0"]) == {"standard", "nextlong", "entropylong",
                                                         "policylong"}
    # MLflow holds the same numbers: rebuild the report from it alone
    tracking = Tracking(spec.tracking.uri, spec.name)
    parent = [r for r in tracking.client.search_runs([tracking.experiment_id])
              if r.info.run_name.startswith("compare-")][0]
    again = from_mlflow(tracking, parent.info.run_id)
    assert set(again["rows"]) == set(results["rows"])
    for label, row in results["rows"].items():
        for L, v in row["eval"]["probe"].items():
            assert again["rows"][label]["eval"]["probe"][int(L)] == pytest.approx(v)
    assert again["cross"]["entropylong"]["1"]["policylong"] == pytest.approx(
        results["cross"]["entropylong"]["1"]["policylong"])
    # one schedule across the stages: the learning rate never rises after the first warm-up
    for child in tracking.children(parent.info.run_id):
        lrs = [v for _, v in tracking.metric_history(child.info.run_id, "train/lr")]
        if not lrs:
            continue
        peak = lrs.index(max(lrs))
        assert all(b <= a + 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:])), lrs
    # a rerun of the finished spec reuses every stage dataset, checkpoint and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in Path(spec.output_dir).rglob("manifest.json")}
    stamps.update({p: p.stat().st_mtime_ns for p in Path(spec.output_dir).rglob("stage_done.json")})
    t0 = time.perf_counter()
    compare(spec)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert time.perf_counter() - t0 < 120
