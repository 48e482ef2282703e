"""Bad input through the real commands: each case checks the exit status, that the message names
the culprit (file and line, key path, model path) and what is expected, and that no partial
output remains. The CLI runs in-process (``harness.cli.main``), exactly as the console script."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox(default_sandbox):
    mp = pytest.MonkeyPatch()
    mp.setenv("POLICYLONG_SANDBOX_DIR", str(default_sandbox.parent))
    yield default_sandbox
    mp.undo()


@pytest.fixture
def spec_file(tmp_path, sandbox):
    data = yaml.safe_load((REPO / "runs" / "smoke.yaml").read_text())
    data["output_dir"] = str(tmp_path / "out")
    data["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def run(capsys, *argv) -> tuple[int, str]:
    from harness.cli import main

    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def nothing_written(tmp_path: Path) -> None:
    """No output folder, no stage dataset, no MLflow store."""
    out = tmp_path / "out"
    assert not list(out.rglob("dataset")) if out.exists() else True
    assert not list(out.rglob("*.tmp")) if out.exists() else True
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------- corpus

def _corpus(tmp_path: Path, case: str) -> Path:
    p = tmp_path / f"{case}.jsonl"
    rows = [json.dumps({"id": i, "text": f"document {i} " * 50}) for i in range(3)]
    if case == "empty":
        p.write_bytes(b"")
    elif case == "malformed":
        p.write_text(rows[0] + "\n" + '{"id": 9, "text": "unterminated\n')
    elif case == "missing_text":
        p.write_text(rows[0] + "\n" + json.dumps({"id": 9, "body": "x"}) + "\n")
    elif case == "non_utf8":
        p.write_bytes(rows[0].encode() + b"\n" + b'{"id": 9, "text": "caf\xe9"}\n')
    elif case == "enormous_line":
        p.write_text(rows[0] + "\n" + json.dumps({"id": 9, "text": "word " * 1_000_000}) + "\n")
    elif case == "binary":
        p.write_bytes(bytes(range(256)) * 64)
    elif case == "too_small":
        p.write_text(json.dumps({"id": 1, "text": "one short document"}) + "\n")
    return p


CORPUS_CASES = {
    "empty": r"empty\.jsonl: no usable documents \(expected at least one non-empty 'text'\)",
    "malformed": r"malformed\.jsonl line 2: malformed JSON .*expected one JSON object per line",
    "missing_text": r"missing_text\.jsonl line 2: missing field 'text' \(expected a string "
                    r"under 'text'",
    "non_utf8": r"non_utf8\.jsonl line 2: not valid UTF-8 \(byte 0xe9 .*expected UTF-8 text",
    "enormous_line": r"enormous_line\.jsonl line 2: a document of 5,000,000 characters "
                     r"\(expected at most corpus\.max_doc_chars = 4,000,000",
    "binary": r"binary\.jsonl line 1: binary data \(a NUL byte at byte offset 0; expected "
              r"UTF-8 text\)",
    "too_small": r"too_small\.jsonl: 1 documents, \d+ tokens: too small for "
                 r"stages\.count 2 x stages\.tokens_per_stage 131,072 = 262,144 tokens "
                 r"without reusing a root",
}


@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus(case, tmp_path, spec_file, capsys):
    corpus = _corpus(tmp_path, case)
    rc, err = run(capsys, "construct", spec_file, "--method", "entropylong", "--stage", "0",
                  "-o", f"corpus.path={corpus}")
    assert rc == 2, err[-2000:]
    assert re.search(CORPUS_CASES[case], err), err[-2000:]
    nothing_written(tmp_path)


# ------------------------------------------------------------------------------------ spec

SPEC_CASES = [
    ("unknown key", ["-o", "screening.alpah=2.0"],
     r"screening\.alpah: unknown key \(did you mean 'screening\.alpha'\?\)"),
    ("wrong type", ["-o", "stages.count=two"], r"stages\.count: .*integer.*\(got 'two'\)"),
    ("negative length", ["-o", "eval.lengths=[-512, 1024]"],
     r"eval\.lengths: .*lengths must be positive"),
    ("non-increasing lengths", ["-o", "eval.lengths=[1024, 512]"],
     r"eval\.lengths: .*strictly increasing"),
    ("epsilon out of range", ["-o", "screening.epsilon=1.5"], r"screening\.epsilon: .*1\.5"),
    ("alpha out of range", ["-o", "screening.alpha=-1"], r"screening\.alpha: .*-1"),
]


@pytest.mark.parametrize("case,args,pattern", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_by_check_and_compare(case, args, pattern, tmp_path, spec_file,
                                                  capsys):
    for cmd in ("check", "compare"):
        rc, err = run(capsys, cmd, spec_file, *args)
        assert rc == 2, err[-2000:]
        assert re.search(pattern, err) and str(spec_file) in err, err[-2000:]
    nothing_written(tmp_path)


@pytest.mark.parametrize("key,value,pattern", [
    ("methods.3.name", "polcylong", r"unknown method 'polcylong'.*did you mean 'policylong'"),
    ("eval.benchmarks.1.name", "rulr", r"unknown benchmark 'rulr'.*did you mean 'ruler'"),
], ids=["method", "benchmark"])
def test_unknown_names_get_a_suggestion(key, value, pattern, tmp_path, spec_file, capsys):
    rc, err = run(capsys, "compare", spec_file, "-o", f"{key}={value}")
    assert rc == 2 and re.search(pattern, err, re.S), err[-2000:]
    nothing_written(tmp_path)


def test_length_beyond_the_model_without_rope_change(tmp_path, spec_file, capsys):
    rc, err = run(capsys, "compare", spec_file, "-o", "context_extension.rope_theta=null")
    assert rc == 2
    assert "stages.target_length 2048 exceeds the model's max_position_embeddings 512" in err
    nothing_written(tmp_path)


def test_a_length_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, spec_file,
                                                                      capsys):
    rc, err = run(capsys, "compare", spec_file, "-o", "stages.target_length=1048576",
                  "-o", "stages.tokens_per_stage=1048576",
                  "-o", "context_extension.max_position_embeddings=1048576")
    assert rc == 2, err[-2000:]
    assert "stages.target_length 1048576 with train.micro_batch 4 needs an estimated" in err
    assert "attention scores and mask" in err and "gradient_checkpointing" in err
    nothing_written(tmp_path)


def test_memory_estimate_grows_with_length_and_passes_the_smoke_spec(sandbox):
    from transformers import AutoConfig

    from harness.training.memory import check_training_fits, training_estimate

    cfg = AutoConfig.from_pretrained(str(sandbox / "model"))
    a = training_estimate(cfg, 2048, 4, 512, False, False)
    b = training_estimate(cfg, 4096, 4, 512, False, False)
    assert b["attention scores and mask"] == 4 * a["attention scores and mask"]
    assert b["activations"] == 2 * a["activations"]
    assert training_estimate(cfg, 4096, 4, 512, False, True)["attention scores and mask"] == 0
    ok = check_training_fits(cfg, 2048, 4, 512, False, device="cpu")
    assert ok["estimate_bytes"] < ok["available_bytes"]
    from harness.config import SpecError
    with pytest.raises(SpecError, match="lower train.micro_batch"):
        check_training_fits(cfg, 2048, 4, 512, False, device="cpu",
                            available=ok["estimate_bytes"] - 1)


def test_read_only_output_folder(tmp_path, spec_file, capsys):
    import tempfile

    ro = Path(tempfile.mkdtemp(prefix="policylong-ro-", dir="/tmp"))   # reachable by anyone
    os.chmod(ro, 0o555)
    try:
        _read_only_case(ro, spec_file, capsys)
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(ro)


def _read_only_case(ro: Path, spec_file: Path, capsys) -> None:
    if os.geteuid() == 0:               # root writes anywhere: run the check as nobody
        import subprocess
        import sys
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux)")
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c",
                            "import sys; from harness.experiments.wiring import check_writable; "
                            "from pathlib import Path; check_writable(Path(sys.argv[1]), "
                            "'output_dir')", str(ro / "out")],
                           cwd=REPO, env=env, capture_output=True, text=True)
        assert r.returncode != 0
        assert f"output_dir {ro / 'out'}: cannot write in {ro} (Permission denied)" in r.stderr
        return
    rc, err = run(capsys, "compare", spec_file, "-o", f"output_dir={ro / 'out'}")
    assert rc == 2 and f"cannot write in {ro}" in err
    assert not (ro / "out").exists()


# ----------------------------------------------------------------------------------- model

def test_missing_model_path(tmp_path, spec_file, capsys):
    rc, err = run(capsys, "compare", spec_file, "-o", f"model.path={tmp_path / 'nowhere'}")
    assert rc == 2 and f"model.path {tmp_path / 'nowhere'}: no such folder" in err
    nothing_written(tmp_path)


def test_not_a_causal_lm(tmp_path, spec_file, sandbox, capsys):
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=6144, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(d)
    for f in (sandbox / "model").glob("tokenizer*"):
        shutil.copy(f, d)
    rc, err = run(capsys, "compare", spec_file, "-o", f"model.path={d}")
    assert rc == 2 and f"model.path {d}: model_type 'bert' (BertModel) is not a causal LM" in err
    nothing_written(tmp_path)


def test_tokenizer_that_does_not_match_the_model(tmp_path, spec_file, sandbox, capsys):
    d = tmp_path / "mismatch"
    shutil.copytree(sandbox / "model", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (d / "config.json").write_text(json.dumps(cfg))
    rc, err = run(capsys, "compare", spec_file, "-o", f"model.path={d}")
    assert rc == 2, err[-2000:]
    assert re.search(rf"model.path {d}: the tokenizer has [\d,]+ tokens but the model's "
                     rf"vocab_size is 1,000: they do not belong together", err)
    nothing_written(tmp_path)


# ------------------------------------------------------------------------- benchmark data

def test_benchmark_data_missing_file_and_wrong_schema(tmp_path, spec_file, sandbox, capsys):
    model = sandbox / "model"
    rc, err = run(capsys, "eval", spec_file, "--model", model, "--bench", "longbench_v2",
                  "-o", f"eval.benchmarks.2.params.path={tmp_path / 'missing.json'}")
    assert rc == 2 and f"longbench_v2: params.path: file not found: {tmp_path / 'missing.json'}" \
        in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"_id": "x", "question": "q?"}]))
    rc, err = run(capsys, "eval", spec_file, "--model", model, "--bench", "longbench_v2",
                  "--lengths", "512", "-o", f"eval.benchmarks.2.params.path={bad}")
    assert rc == 2 and f"{bad}: item 0 (_id='x'): missing field 'domain'" in err, err[-2000:]
    nothing_written(tmp_path)
