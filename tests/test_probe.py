"""The sandbox probe (``benchmarks/probe.py``): inputs of exact length whose query starts a
sentence, a control that differs only where the profile was, the look-alike variant, and what
the shipped base model makes of both at its base context."""
import hashlib
import json
from pathlib import Path

import pytest

from benchmarks.probe import probe_items, run_probe
from harness.sandbox import world as W

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "harness" / "assets" / "sandbox-model" / "model"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL))


@pytest.fixture(scope="module")
def probe():
    # the default world's seed, so that names and values are single tokens of the shipped
    # tokenizer; another count of entities than the default (these are not the sandbox's)
    _, probe = W.generate_corpus(W.WorldSpec(seed=0, n_entities=20, n_filler_docs=2,
                                             n_probe_entities=40))
    return probe


def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("lookalike", [False, True])
def test_probe_inputs_have_the_length_and_the_query_starts_a_sentence(tokenizer, probe,
                                                                      lookalike):
    for length in (512, 1024):
        items = probe_items(tokenizer, probe, length, 12, seed=0, lookalike=lookalike)
        assert len(items) == 12
        for p, it in zip(probe, items):
            w, c = it["with"], it["control"]
            assert len(w) == len(c) == length and w[-1] == c[-1] == it["target"]
            prof = tokenizer(p["profile"], add_special_tokens=False)["input_ids"]
            # the profile, then only the control differs: where the profile was
            start = next(i for i in range(len(w)) if w[i:i + len(prof)] == prof)
            assert w[:start] == c[:start] and w[start + len(prof):] == c[start + len(prof):]
            assert c[start:start + len(prof)] != prof
            # the distance counts every token after the profile up to the value
            assert it["distance"] == length - 1 - start - len(prof)
            # the query, "<First> <Last> keeps the <attr>", follows a sentence's full stop
            text = tokenizer.decode(w[:-1])
            head, sep, query = text.rpartition(f" {p['first']} {p['last']} keeps the ")
            assert sep and head.endswith("."), text[-120:]
            la = " " + p["lookalike_profile"]
            if lookalike:
                # the look-alike stands between the profile and the query in both inputs
                assert la in tokenizer.decode(w[start + len(prof):]) and la in \
                    tokenizer.decode(c)
                attr = query.strip()
                (v,) = [v for a, v in p["lookalike"]["facts"] if a == attr]
                assert it["distractor"] == tokenizer(" " + v, add_special_tokens=False)[
                    "input_ids"][0] != it["target"]
            else:
                assert la not in tokenizer.decode(w) and "distractor" not in it


def test_probe_items_change_with_the_seed_the_variant_and_the_entities(tokenizer, probe):
    base = _digest(probe_items(tokenizer, probe, 512, 8, seed=0))
    assert base == _digest(probe_items(tokenizer, probe, 512, 8, seed=0))
    assert base != _digest(probe_items(tokenizer, probe, 512, 8, seed=1))
    assert base != _digest(probe_items(tokenizer, probe, 512, 8, seed=0, lookalike=True))
    assert base != _digest(probe_items(tokenizer, probe[1:], 512, 8, seed=0))
    # too short for the profile, the look-alike and the query: no items
    assert probe_items(tokenizer, probe, 120, 8, seed=0, lookalike=True) == []


def test_the_shipped_model_reads_the_probe_at_its_base_context_and_copies_the_lookalike(
        tokenizer, probe):
    """At 512 the shipped base model reads a profile that lies a few hundred tokens back
    (the query starting a sentence); with the look-alike's profile between them it mostly
    copies the look-alike's value, the value that followed the attribute last."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype="float32")
    plain = run_probe(model, tokenizer, probe, [512], n=40, seed=0)[512]
    la = run_probe(model, tokenizer, probe, [512], n=40, seed=0, lookalike=True)[512]
    assert plain["acc"] >= 0.6 and plain["gain"] > 3.0, plain
    assert la["distractor_acc"] >= 0.6 and la["acc"] <= 0.25, la
    assert plain["n"] == la["n"] == 40 and "distractor_acc" not in plain
