"""Faults survived: a real ``kill -9`` of ``policylong compare`` at every step, two comparisons
of one spec at once, and a killed comparison's MLflow runs closed on the next start."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_compare import micro_spec_file

REPO = Path(__file__).resolve().parents[1]


def one_method_spec(tmp_path: Path, name: str, sandbox: Path) -> Path:
    """The micro spec with PolicyLong only (the method with every step: screening with the
    current checkpoint, so stage 1 depends on stage 0's training) and a mid-stage state."""
    p = micro_spec_file(tmp_path, sandbox)
    d = yaml.safe_load(p.read_text())
    d["methods"] = [m for m in d["methods"] if m["name"] == "policylong"]
    d["output_dir"] = str(tmp_path / name)
    d["train"]["save_every"] = 1
    d["tracking"] = {"uri": f"sqlite:///{tmp_path / name}.db"}
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(d))
    return out


def compare(spec: Path, sandbox: Path, kill_at: str | None = None, wait: bool = True,
            own_cache: bool = False):
    """``own_cache``: the token store and chunk index under the output folder, built by this
    comparison, instead of the session's shared cache."""
    drop = ("MLFLOW_TRACKING_URI", "POLICYLONG_KILL_AT") + \
        (("POLICYLONG_CACHE_DIR",) if own_cache else ())
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", POLICYLONG_SANDBOX_DIR=str(sandbox))
    if kill_at:
        env["POLICYLONG_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "harness.cli", "compare", str(spec)]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def outcome(out: Path) -> dict:
    """What a comparison produced: dataset hashes, checkpoint digests, evaluation scores."""
    from harness.fileio import sha256_file

    res = {"datasets": {}, "checkpoints": {}}
    # keyed by the path below the output folder: <method>/<hash>/stage-<k>
    for m in sorted(out.rglob("dataset/manifest.json")):
        key = str(m.parent.parent.relative_to(out))
        res["datasets"][key] = json.loads(m.read_text())["dataset_sha256"]
    for c in sorted(out.rglob("checkpoint/model.safetensors")):
        res["checkpoints"][str(c.parent.parent.relative_to(out))] = sha256_file(c)
    res["eval"] = json.loads((out / "report" / "results.json").read_text())["rows"]
    for row in res["eval"].values():
        for st in row["stages"]:
            for key in ("stage_seconds", "build_seconds", "construct_seconds",
                        "train_seconds"):
                st.pop(key, None)
    return res


def _differences(a, b, path: str = "") -> list[str]:
    """The paths (``rows/base/eval/probe/512``) where two nested results differ, with both
    values: a failed comparison says which number moved, not only that one did."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def nothing_looks_complete_that_is_not(out: Path) -> None:
    """Every folder with a manifest is whole; everything half-written is a ``.tmp``."""
    from harness.construction.stage_data import StageDataset

    for m in out.rglob("dataset/manifest.json"):
        StageDataset(m.parent).verify()
    for d in out.rglob("checkpoint"):
        if d.is_dir():
            assert (d / "model.safetensors").exists() and (d / "stage_done.json").exists(), d
    for idx in (out / "cache").rglob("index.faiss"):
        assert (idx.parent / "manifest.json").exists() or idx.parent.name.endswith(".tmp")


@pytest.fixture(scope="module")
def sandbox(small_sandbox):
    return small_sandbox.parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sandbox):
    """Two comparisons of one spec started at once, run to the end: their output is the
    reference that a comparison killed at every step must reproduce."""
    tmp = tmp_path_factory.mktemp("both")
    spec = one_method_spec(tmp, "both", sandbox)
    a = compare(spec, sandbox, wait=False)
    b = compare(spec, sandbox, wait=False)
    (_, err_a), (_, err_b) = a.communicate(timeout=900), b.communicate(timeout=900)
    return tmp / "both", (a.returncode, err_a), (b.returncode, err_b)


@pytest.mark.slow
def test_two_comparisons_of_one_spec_share_instead_of_colliding(reference):
    out, (rc_a, err_a), (rc_b, err_b) = reference
    assert rc_a == 0, err_a[-3000:]
    assert rc_b == 0, err_b[-3000:]
    assert "[lock] waiting for process" in err_a + err_b
    # each stage was built and trained once: by whoever held the lock
    built = (err_a + err_b).count('"method": "policylong", "stage": 0')
    assert built == 1
    nothing_looks_complete_that_is_not(out)


@pytest.mark.slow
def test_kill_9_at_every_step_resumes_to_the_same_results(tmp_path, sandbox, reference):
    from harness.faults import POINTS
    from harness.tracking import Tracking

    ref, (rc_a, err_a), (rc_b, _) = reference
    assert rc_a == 0 and rc_b == 0, err_a[-3000:]
    expected = outcome(ref)
    assert len(expected["datasets"]) == 2 and len(expected["checkpoints"]) == 2

    chain = one_method_spec(tmp_path, "chain", sandbox)
    # the base model's evaluation comes first, then the index, screening, writing, training
    # ... and training in stage 1, which continues stage 0's optimizer state and schedule
    for point in ("eval", "index", "screening", "dataset-write", "train", "train-late"):
        assert point in POINTS
        r = compare(chain, sandbox, kill_at=point, own_cache=True)   # killed while indexing
        assert r.returncode == -9, f"{point}: never reached (exit {r.returncode})\n" \
                                   f"{r.stderr[-2000:]}"
        nothing_looks_complete_that_is_not(tmp_path / "chain")
        assert not (tmp_path / "chain" / "report" / "results.json").exists()
    r = compare(chain, sandbox, own_cache=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "marked" in r.stderr and "KILLED" in r.stderr
    got = outcome(tmp_path / "chain")
    assert got == expected, f"differs at {_differences(got, expected)[:10]}"
    # the killed processes' MLflow runs were closed, not left running
    tracking = Tracking(f"sqlite:///{tmp_path / 'chain'}.db", "smoke")
    runs = tracking.client.search_runs([tracking.experiment_id])
    assert not [x for x in runs if x.info.status == "RUNNING"]
    assert sum(x.info.status == "KILLED" for x in runs
               if x.info.run_name.startswith("compare-")) == 6


def test_pickle_checkpoints_are_refused_before_any_work(tmp_path, tiny_model_dir):
    """A model folder holding only ``pytorch_model.bin`` is named and refused by the pre-flight
    check and by every loader (``use_safetensors=True``); nothing enables remote code."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from harness.training.model_io import load_eval_model

    from harness.experiments.wiring import check_model_folder

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    bad = tmp_path / "pickled"
    bad.mkdir()
    torch.save(model.state_dict(), bad / "pytorch_model.bin")   # the old pickle format
    for f in list(tiny_model_dir.glob("tokenizer*")) + [tiny_model_dir / "config.json"]:
        shutil.copy(f, bad)
    assert (bad / "pytorch_model.bin").exists() and not list(bad.glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"pickled: no \*\.safetensors weights \(only pickle "
                                         r"files: pytorch_model\.bin"):
        check_model_folder(bad)
    with pytest.raises(OSError):
        load_eval_model(bad)
    check_model_folder(tiny_model_dir)          # the safetensors folder passes
    src = "\n".join(p.read_text() for p in (REPO / "harness").rglob("*.py"))
    assert "trust_remote_code=True" not in src


def test_a_length_past_the_model_without_a_rope_change_is_refused(tmp_path, sandbox):
    spec = one_method_spec(tmp_path, "norope", sandbox)
    d = yaml.safe_load(spec.read_text())
    d["context_extension"] = {"max_position_embeddings": 1024}   # positions, but no RoPE change
    spec.write_text(yaml.safe_dump(d))
    r = compare(spec, sandbox)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "stages.target_length 1024 exceeds the model's max_position_embeddings 512" in r.stderr
    assert "context_extension.rope_theta" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "norope").exists() and not (tmp_path / "norope.db").exists()


def test_a_full_disk_during_a_dataset_write_leaves_nothing_that_looks_complete(tmp_path,
                                                                              sandbox):
    """The file-size limit (RLIMIT_FSIZE) stands in for a full disk: the shared caches are
    built first without it, then the stage dataset's write fails. Clear error, no dataset."""
    import resource

    spec = one_method_spec(tmp_path, "full", sandbox)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", POLICYLONG_SANDBOX_DIR=str(sandbox))
    base = [sys.executable, "-m", "harness.cli", "construct", str(spec), "--stage", "0"]
    d = yaml.safe_load(spec.read_text())
    d["methods"].append({"name": "entropylong"})
    spec.write_text(yaml.safe_dump(d))
    r = subprocess.run(base + ["--method", "entropylong"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]       # token store and index are now cached

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run(base + ["--method", "policylong"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "could not write" in r.stderr and "stage-0/dataset" in r.stderr
    assert "nothing was left behind" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "full" / "policylong").rglob("dataset*"))
