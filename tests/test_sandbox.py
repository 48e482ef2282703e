import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import SandboxSpec
from harness.sandbox import world as W

REPO = Path(__file__).resolve().parents[1]


def test_corpus_is_deterministic_and_seeded():
    a, pa = W.generate_corpus(W.WorldSpec(seed=3, n_entities=20, n_probe_entities=5))
    b, pb = W.generate_corpus(W.WorldSpec(seed=3, n_entities=20, n_probe_entities=5))
    c, _ = W.generate_corpus(W.WorldSpec(seed=4, n_entities=20, n_probe_entities=5))
    assert a == b and pa == pb
    assert a != c


def test_planted_dependencies_are_consistent():
    docs, probe = W.generate_corpus(W.WorldSpec(seed=1, n_entities=40, n_probe_entities=10))
    by_entity = {}
    for d in docs:
        if d["kind"] == "profile":
            by_entity[d["entity"]] = d
    refs = [d for d in docs if d["kind"] == "reference"]
    assert len(refs) == 40 and len(by_entity) == 40
    for r in refs:
        prof = by_entity[r["entity"]]
        first, last = r["entity"].split(" ", 1)
        for attr, value in r["facts"]:
            sentence = W.fact(attr, first, last, value)
            assert sentence in r["text"] and sentence in prof["text"]
    looks = [d for d in docs if d["kind"] == "lookalike"]
    assert looks, "no look-alike profiles generated"
    for la in looks:
        orig = by_entity[la["lookalike_of"]]
        assert la["entity"].split()[0] == orig["entity"].split()[0]
        assert la["entity"] != orig["entity"]
        assert dict(map(tuple, la["facts"])).keys() == dict(map(tuple, orig["facts"])).keys()
        assert all(v1 != v2 for (_, v1), (_, v2) in zip(sorted(la["facts"]), sorted(orig["facts"])))
    corpus_names = {d["entity"] for d in docs if d["entity"]}
    assert not corpus_names & {p["entity"] for p in probe}, "probe entities must be held out"


def test_tokenizer_round_trips_through_autotokenizer(tiny_tokenizer_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    raw = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    docs, _ = W.generate_corpus(W.WorldSpec(seed=2, n_entities=10, n_probe_entities=2))
    texts = [d["text"] for d in docs] + ["Numbers 12345 and  spaces\n\nnew lines, café!"]
    for t in texts:
        assert tok(t)["input_ids"] == raw.encode(t).ids
        assert tok.decode(tok(t)["input_ids"]) == t


@pytest.fixture(scope="module")
def sandbox(default_sandbox):
    return default_sandbox


def test_build_uses_shipped_model_and_is_cached(sandbox):
    from harness.sandbox.build import build_sandbox
    man = json.loads((sandbox / "manifest.json").read_text())
    assert man["model_origin"] == "shipped"
    assert (sandbox / "model" / "config.json").exists()
    before = (sandbox / "manifest.json").stat().st_mtime_ns
    again = build_sandbox(SandboxSpec(), out_root=sandbox.parent)
    assert again == sandbox and (sandbox / "manifest.json").stat().st_mtime_ns == before


def test_corpus_reads_as_a_user_corpus(sandbox):
    from harness.data.corpus import read_corpus
    docs, report = read_corpus(str(sandbox / "corpus.jsonl"))
    assert len(docs) == json.loads((sandbox / "manifest.json").read_text())["n_documents"]


def test_properties_on_held_out_entities(sandbox):
    """On the 200 held-out probe entities (600 planted values), with the config defaults:
    (a) the planted values are anchors; (b) the true profile lowers their entropy by ΔI > ε for
    a large share (0.47 measured; the 0.6 aimed at is not reached: docs/sandbox.md), while an
    equally long filler control almost never does; (c) a look-alike profile lowers the entropy
    nearly as often (confident wrong copies), so entropy cannot tell them apart, but the NLL of
    the true value falls with the true profile and rises with the look-alike for most anchors.
    The figures recorded with the build match a fresh measurement."""
    from harness.config import ScreeningSpec
    from harness.sandbox.build import measure_properties
    s = ScreeningSpec()
    probe = [json.loads(l) for l in (sandbox / "probe.jsonl").read_text().splitlines()]
    p = measure_properties(sandbox / "model", probe, alpha=s.alpha, epsilon=s.epsilon)
    assert p["a_value_tokens_anchor_frac"] > 0.9, p
    assert p["planted_anchors"] > 500, p
    assert p["b_true_dI_H_gt_eps_frac"] > 0.6, p
    assert p["control_dI_H_gt_eps_frac"] < 0.05, p
    assert p["c_lookalike_dI_H_gt_eps_frac"] > 0.6 * p["b_true_dI_H_gt_eps_frac"], p
    assert p["c_nll_separates_frac"] > 0.75, p
    assert p["lookalike_dI_N_gt_eps_frac"] < 0.05 < 0.5 < p["true_dI_N_gt_eps_frac"], p
    recorded = json.loads((sandbox / "properties.json").read_text())
    for k in ("a_value_tokens_anchor_frac", "b_true_dI_H_gt_eps_frac", "c_nll_separates_frac"):
        assert abs(p[k] - recorded[k]) < 1e-6, k


def test_from_scratch_recipe_runs_end_to_end(tmp_path, monkeypatch):
    """The from-scratch path (tokenizer, rows, Accelerate pre-training, save, measure) on a
    recipe shrunk to a few steps; the full recipe is what `sandbox build --from-scratch` runs."""
    import dataclasses
    from harness.sandbox import build as B
    tiny = dataclasses.replace(B.RECIPE, steps=3, micro_batch=2, layers=1, hidden=32,
                               intermediate=64, heads=2, kv_heads=1, tokenizer_texts=200,
                               drill_warmup_steps=1, copy_warmup_steps=1, continue_steps=2,
                               format_steps=0)
    monkeypatch.setattr(B, "RECIPE", tiny)
    spec = SandboxSpec(n_entities=10, n_probe_entities=4, n_filler_docs=2)
    out = B.build_sandbox(spec, from_scratch=True, out_root=tmp_path)
    man = json.loads((out / "manifest.json").read_text())
    assert man["model_origin"] == "from-scratch" and man["recipe"]["steps"] == 3
    assert man["model_key"] == B.model_key(spec, tiny)
    props = json.loads((out / "properties.json").read_text())
    assert 0.0 <= props["a_value_tokens_anchor_frac"] <= 1.0
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.state"))


def _tiny_recipe():
    from harness.sandbox import build as B
    return dataclasses.replace(B.RECIPE, steps=4, micro_batch=2, layers=1, hidden=32,
                               intermediate=64, heads=2, kv_heads=1, tokenizer_texts=200,
                               drill_warmup_steps=1, copy_warmup_steps=1, continue_steps=4,
                               format_steps=0)


class _Killed(Exception):
    pass


def test_a_killed_build_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """A resumable build (``pretrain(state_dir=...)``) killed mid-phase 2, right after a saved
    training state, is run again: phase 1's weights are loaded, not trained again, phase 2 goes
    on from its saved step, and the model equals, bit for bit, one built without a stop."""
    import torch
    from harness.sandbox import build as B
    from harness.training import loop
    from harness.training.model_io import load_model

    spec, recipe = SandboxSpec(n_entities=10, n_probe_entities=4, n_filler_docs=2), _tiny_recipe()
    B.pretrain(spec, tmp_path / "plain", recipe)
    monkeypatch.setattr(B, "SAVE_EVERY", 2)
    saves = []

    def kill_at_the_second_save(name):      # phase 1 saves at step 2, then phase 2 at step 2
        saves.append(name)
        if len(saves) == 2:
            raise _Killed
    monkeypatch.setattr(loop.faults, "point", kill_at_the_second_save)
    state = tmp_path / "resumable.state"
    with pytest.raises(_Killed):
        B.pretrain(spec, tmp_path / "resumable", recipe, state_dir=state)
    assert (state / "phase-1" / "done").exists() and not (state / "phase-2" / "done").exists()
    assert json.loads((state / "phase-2" / "loop" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "resumable").exists()

    trained = []
    real_rows = B.mixed_rows
    monkeypatch.setattr(B, "mixed_rows", lambda *a, **k: trained.append(k) or real_rows(*a, **k))
    B.pretrain(spec, tmp_path / "resumable", recipe, state_dir=state)
    assert len(trained) == 1 and "stream_offset" in trained[0]   # phase 2's rows alone
    assert not state.exists()
    a, b = load_model(tmp_path / "plain"), load_model(tmp_path / "resumable")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    # and the weights follow the recipe: a shorter phase 2 ends elsewhere
    fresh = B.pretrain(spec, tmp_path / "short", dataclasses.replace(recipe, continue_steps=1))
    assert not torch.equal(load_model(fresh).state_dict()["lm_head.weight"],
                           a.state_dict()["lm_head.weight"])


def test_a_build_refuses_progress_left_by_another_recipe(tmp_path, monkeypatch):
    from harness.sandbox import build as B
    from harness.training import loop

    spec, recipe = SandboxSpec(n_entities=10, n_probe_entities=4, n_filler_docs=2), _tiny_recipe()
    monkeypatch.setattr(B, "SAVE_EVERY", 2)
    monkeypatch.setattr(loop.faults, "point", lambda name: (_ for _ in ()).throw(_Killed))
    state = tmp_path / "m.state"
    with pytest.raises(_Killed):
        B.pretrain(spec, tmp_path / "m", recipe, state_dir=state)
    other = dataclasses.replace(recipe, lr=1e-3)
    with pytest.raises(ValueError, match="another build") as exc:
        B.pretrain(spec, tmp_path / "m", other, state_dir=state)
    assert str(state) in str(exc.value)
    with pytest.raises(ValueError, match="another build"):   # nor another world
        B.pretrain(SandboxSpec(n_entities=12, n_probe_entities=4, n_filler_docs=2),
                   tmp_path / "m", recipe, state_dir=state)
    assert (state / "phase-1" / "loop" / "state.json").exists()   # left as it was
    assert not (tmp_path / "m").exists()


def test_pretrain_script_builds_a_variant_and_refuses_a_bad_one_before_work(tmp_path, capsys):
    """``scripts/sandbox_pretrain.py --set``: any recipe field (the model's shape too), each
    checked before the tokenizer is trained; the folder is written only when complete."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / "sandbox_pretrain.py"
    spec_ = importlib.util.spec_from_file_location("sandbox_pretrain", path)
    script = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(script)
    out = tmp_path / "deep"
    for bad, says in (("layers=0", "layers must be at least 1"), ("heads=3", "even width"),
                      ("kv_heads=3", "multiple of kv_heads"), ("version=5", "'version' is not"),
                      ("stages=[]", "'stages' is not"), ("copy_len=[3]", "takes 2 values"),
                      ("lr=fast", "lr takes a float"), ("layer=4", "'layer' is not"),
                      ("layers", "expected FIELD=VALUE")):
        with pytest.raises(SystemExit) as exc:
            script.main(["--out", str(out), "--set", bad])
        assert exc.value.code == 2
        assert says in capsys.readouterr().err, bad
    assert not out.exists() and not list(tmp_path.iterdir())
    tiny = ["steps=3", "micro_batch=2", "layers=3", "hidden=32", "intermediate=64", "heads=2",
            "kv_heads=1", "tokenizer_texts=200", "drill_warmup_steps=1", "copy_warmup_steps=1",
            "continue_steps=2", "format_steps=0", "copy_len=[20, 40]"]
    assert script.main(["--out", str(out), "--max-positions", "1024"]
                       + [a for t in tiny for a in ("--set", t)]) == 0
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["max_position_embeddings"] == 1024
    report = json.loads((out / "pretrain.json").read_text())
    assert report["changes"]["layers"] == 3 and report["recipe"]["copy_len"] == [20, 40]
    assert report["recipe"]["format_mc_answer"] == "letter"      # the rest as in version 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # no state, no .tmp left
    with pytest.raises(SystemExit) as exc:
        script.main(["--out", str(out)])
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_tokenizer_and_model_round_trip_through_vllm(sandbox, tmp_path):
    from transformers import AutoTokenizer
    from harness.training.model_io import load_model
    import torch

    tok = AutoTokenizer.from_pretrained(str(sandbox / "model"))
    docs = [json.loads(l) for l in (sandbox / "corpus.jsonl").read_text().splitlines()[:6]]
    texts = [d["text"][:600] for d in docs]
    (tmp_path / "p.json").write_text(json.dumps({"texts": texts, "max_tokens": 6,
                                                 "again": True}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tests/helpers/vllm_check.py"),
                        str(sandbox / "model"), "512", str(tmp_path / "p.json")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert res["ids"] == [tok(t)["input_ids"] for t in texts]
    model = load_model(sandbox / "model")
    for ids, gen in zip(res["ids"], res["generated"]):
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
        assert out[0, len(ids):].tolist() == gen
    # on CPU the engine core runs in this process (vllm_engine.cpu_environment), and engines
    # started one after another there, each stopped by close(), give the same tokens
    assert res["engine_core"] == "InprocClient"
    assert res["again"] == [res["generated"]] * 2 and res["closed"] == [True, True]
    # and left this process as they found it: random state, environment, torch's threads call
    assert res["rng_kept"] and res["env_kept"] and res["threads_kept"]


class _Copier:
    """Logit 30 on the token that followed the earlier position whose preceding tokens match
    the current ones longest (the earliest among equals), uniform where the current token
    never occurred before: an ideal induction head, by construction. Its "hidden state" is the
    logits themselves, read through an identity LM head."""

    def __init__(self, vocab: int, copy: bool = True):
        import torch

        self.vocab, self.copy = vocab, copy
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(vocab))

    def get_output_embeddings(self):
        return self.head

    def get_decoder(self):
        return self._decode

    def _decode(self, input_ids, **_):
        import torch
        from types import SimpleNamespace

        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                best, at = 0, None
                for s in range(t if self.copy else 0):
                    m = 0
                    while m <= s and row[s - m] == row[t - m]:
                        m += 1
                    if m > best:
                        best, at = m, s
                if at is not None:
                    logits[b, t, row[at + 1]] = 30.0
        return SimpleNamespace(last_hidden_state=logits)


def test_the_copying_check_reads_a_copier_and_a_non_copier_apart():
    """The induction check: a model that copies reads the second copy nearly free, one that
    does not reads both copies alike (here uniform: ln V each), for words and for digits."""
    import math

    from transformers import AutoTokenizer

    from harness.sandbox.build import ASSET
    from harness.sandbox.properties import copying

    tok = AutoTokenizer.from_pretrained(str(ASSET / "model"))
    words = W.World(W.WorldSpec(seed=0)).lexicon()
    V = len(tok)
    got = copying(_Copier(V), tok, words, n=4, length=20)
    for kind in ("words", "digits"):
        assert got[kind]["first"] > 0.5 * math.log(V), got
        assert got[kind]["second"] < 0.25 * got[kind]["first"], got
    assert got["words"]["second"] < 0.01, got
    flat = copying(_Copier(V, copy=False), tok, words, n=4, length=20)
    for kind in ("words", "digits"):
        assert flat[kind]["first"] == pytest.approx(math.log(V), abs=1e-3)
        assert flat[kind]["second"] == pytest.approx(math.log(V), abs=1e-3)


def test_copy_rows_carry_loss_only_on_a_slice_of_the_sequence_before_it():
    """Slice copying (recipe version 4): every loss-carrying run is the sequence's last token,
    then a contiguous slice of that sequence, then EOS; a phase's mix holds the copy warm-up
    first and ``copy_share`` of copy rows after it; another stream seed gives other rows."""
    import dataclasses

    import numpy as np
    from transformers import AutoTokenizer

    from harness.sandbox import build as B

    tok = AutoTokenizer.from_pretrained(str(B.ASSET / "model"))
    s, eos = SandboxSpec(), tok.eos_token_id
    ids, pos, pad = B.copy_rows(s, tok, 6, seed=3)
    n_examples = 0
    for r in range(len(ids)):
        carried = np.flatnonzero(~pad[r])
        for run in np.split(carried, np.flatnonzero(np.diff(carried) > 1) + 1):
            start = run[0] - pos[r, run[0]]          # where this example's sequence begins
            seq, got = list(ids[r, start:run[0] + 1]), list(ids[r, run[1:]])
            assert got[-1] == eos and eos not in seq
            k = len(got) - 1
            assert B.RECIPE.copy_slice[0] <= k <= B.RECIPE.copy_slice[1]
            assert any(seq[i:i + k] == got[:-1] for i in range(len(seq) - k + 1))
            n_examples += 1
    assert n_examples > 6 * 5
    other = B.copy_rows(s, tok, 6, seed=4)[0]
    assert not np.array_equal(ids, other)

    r = dataclasses.replace(B.RECIPE, steps=30, drill_warmup_steps=5, micro_batch=4)
    ids, pos, pad = B.mixed_rows(s, tok, r, copy_warmup=10)
    assert ids.shape == (30 * 4, r.context)
    assert pad[:40].any(axis=1).all()                 # the warm-up: copy rows only
    rest = pad[40:].any(axis=1)
    assert rest.mean() == pytest.approx(r.copy_share, abs=0.02)
    assert not pad[40:][~rest].any()                  # text rows carry loss on every token
    with pytest.raises(ValueError, match="copy_len"):
        B.copy_rows(s, tok, 1, dataclasses.replace(B.RECIPE, copy_len=(20, 300)))
    with pytest.raises(ValueError, match="copy warm-up"):
        B.mixed_rows(s, tok, r, copy_warmup=30)
    assert B._with_copy_check(None, tok, s, print, 0) is print   # off: the log as it was
    with pytest.raises(ValueError, match="multiple of 50"):
        B._with_copy_check(None, tok, s, None, 30)
