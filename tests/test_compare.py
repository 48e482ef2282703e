"""A micro comparison end to end: construct → train → probe for every method, the report,
MLflow parent/child runs, and a second invocation that does no work."""
import json
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def micro(data: dict, tmp_path) -> dict:
    """A spec (or study) mapping shrunk to the micro comparison: 2 stages of 4K tokens at 1K."""
    data["output_dir"] = str(tmp_path / "out")
    data["stages"] = {"count": 2, "tokens_per_stage": 4 * 1024, "target_length": 1024}
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
def test_micro_compare_end_to_end_and_noop_rerun(tmp_path, monkeypatch):
    from harness.compare import compare
    from harness.config import load_spec
    from harness.report import from_mlflow
    from harness.tracking import Tracking

    monkeypatch.setenv("POLICYLONG_SANDBOX_DIR", str(tmp_path / "sandbox"))
    spec = load_spec(micro_spec_file(tmp_path, tmp_path / "sandbox"))
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
    # MLflow holds the same numbers: rebuild the report from it alone
    tracking = Tracking(spec.tracking.uri, spec.name)
    parent = [r for r in tracking.client.search_runs([tracking.experiment_id])
              if r.info.run_name.startswith("compare-")][0]
    again = from_mlflow(tracking, parent.info.run_id)
    assert set(again["rows"]) == set(results["rows"])
    for label, row in results["rows"].items():
        for L, v in row["eval"]["probe"].items():
            assert again["rows"][label]["eval"]["probe"][int(L)] == pytest.approx(v)
    # a rerun of the finished spec reuses every stage dataset, checkpoint and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in Path(spec.output_dir).rglob("manifest.json")}
    stamps.update({p: p.stat().st_mtime_ns for p in Path(spec.output_dir).rglob("stage_done.json")})
    t0 = time.perf_counter()
    compare(spec)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert time.perf_counter() - t0 < 120
