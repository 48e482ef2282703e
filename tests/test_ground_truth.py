"""Verification quality against the sandbox's ground truth (``harness.data.ground_truth``).

Expected numbers are computed from the generator's document ids (``profile-i``,
``reference-i`` and ``lookalike-i`` belong to corpus entity i), independently of the entity
names that ``group_quality`` matches on."""
import json
import math

import pytest

from harness.data.ground_truth import DocTruth, group_quality, load_truth
from harness.sandbox import world as W


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    spec = W.WorldSpec(seed=5, n_entities=8, lookalike_fraction=1.0, n_filler_docs=3,
                       n_probe_entities=2)
    docs, _ = W.generate_corpus(spec)
    path = tmp_path_factory.mktemp("gt") / "corpus.jsonl"
    W.write_jsonl(path, docs)
    return path, {d["id"]: d for d in docs}


def ctx(doc_id, role="positive"):
    return {"doc_id": doc_id, "role": role, "chunk_id": 0, "start": 0, "end": 1}


def P(i):
    return f"profile-{i:05d}"


def R(i):
    return f"reference-{i:05d}"


def L(i):
    return f"lookalike-{i:05d}"


def F(i):
    return f"filler-{i:05d}"


def stage_groups():
    """3 true, 1 look-alike, 1 filler positive; negatives: filler, 2 look-alikes, 1 true."""
    return [
        {"root_id": R(0), "contexts": [ctx(P(0)), ctx(L(0)), ctx(F(0), "hard_negative")]},
        {"root_id": R(1), "contexts": [ctx(P(1)), ctx(L(1), "hard_negative")]},
        {"root_id": R(2), "contexts": [ctx(F(1)), ctx(P(2))]},
        {"root_id": R(3), "contexts": [ctx(P(3), "hard_negative"),
                                       ctx(L(3), "hard_negative")]},
        {"root_id": R(4), "root_start": 0, "root_end": 10},   # NExtLong/standard: ignored
        {"root_id": R(5), "contexts": []},                     # no contexts: ignored
    ]


def test_truth_table_matches_the_generator(corpus):
    path, docs = corpus
    truth = load_truth(path)
    assert truth is not None and len(truth) == len(docs)
    for i in range(8):
        ref, prof, la = truth[R(i)], truth[P(i)], truth[L(i)]
        assert (ref.kind, prof.kind, la.kind) == ("reference", "profile", "lookalike")
        # names, not ids: a reference and its profile share the entity's name, and a
        # look-alike names the entity it imitates
        assert ref.entity == prof.entity == docs[P(i)]["entity"]
        assert la.lookalike_of == ref.entity and la.entity != ref.entity
        assert la.entity.split()[0] == ref.entity.split()[0]       # same first name
        assert truth.profile_of[ref.entity] == P(i)
    assert truth[F(0)] == DocTruth("filler", None, None)


def test_precision_shares_and_recall_on_hand_built_groups(corpus):
    truth = load_truth(corpus[0])
    q = group_quality(truth, stage_groups())
    assert q["groups"] == 4 and q["roots"] == 4
    assert q["positives"] == 5 and q["negatives"] == 4
    assert q["verify_precision"] == pytest.approx(3 / 5)
    assert q["positive_lookalike_share"] == pytest.approx(1 / 5)
    assert q["positive_other_share"] == pytest.approx(1 / 5)
    assert q["negatives_lookalike"] == pytest.approx(2 / 4)
    assert q["negatives_true"] == pytest.approx(1 / 4)
    assert q["roots_with_truth"] == 4 and q["roots_true_accepted"] == 3
    assert q["true_profile_recall"] == pytest.approx(3 / 4)
    assert (q["count_positive_true"], q["count_positive_lookalike"],
            q["count_positive_other"]) == (3, 1, 1)
    assert (q["count_negative_true"], q["count_negative_lookalike"],
            q["count_negative_other"]) == (1, 2, 1)
    assert q["count_unknown_docs"] == 0
    assert all(isinstance(v, int) or math.isfinite(v) for v in q.values())


def test_swapping_a_context_changes_the_numbers(corpus):
    truth = load_truth(corpus[0])
    groups = stage_groups()
    before = group_quality(truth, groups)
    # root 1 now accepts its look-alike instead of its true profile
    groups[1]["contexts"][0] = ctx(L(1))
    groups[1]["contexts"][1] = ctx(P(1), "hard_negative")
    after = group_quality(truth, groups)
    assert after["verify_precision"] == pytest.approx(2 / 5)
    assert after["verify_precision"] < before["verify_precision"]
    assert after["positive_lookalike_share"] == pytest.approx(2 / 5)
    assert after["negatives_true"] == pytest.approx(2 / 4)
    assert after["negatives_lookalike"] == pytest.approx(1 / 4)
    assert after["true_profile_recall"] == pytest.approx(2 / 4)
    # another root's profile is no true context: profile 7 offered to reference 0
    groups = stage_groups()
    groups[0]["contexts"][0] = ctx(P(7))
    q = group_quality(truth, groups)
    assert q["verify_precision"] == pytest.approx(2 / 5)
    assert q["positive_other_share"] == pytest.approx(2 / 5)
    # a look-alike of another entity is "other", not "lookalike"
    groups = stage_groups()
    groups[0]["contexts"][1] = ctx(L(6))
    q = group_quality(truth, groups)
    assert q["positive_lookalike_share"] == 0 and q["positive_other_share"] == pytest.approx(2 / 5)


def test_rates_without_a_denominator_are_left_out(corpus):
    from harness.construction.stage_data import Group

    truth = load_truth(corpus[0])
    # a profile root has no true context; only positives, given as Group objects
    q = group_quality(truth, [Group([1, 2], {"root_id": P(0), "contexts": [ctx(R(0))]}),
                              Group([1], {"root_id": F(0), "contexts": [ctx(P(1))]})])
    assert q["positives"] == 2 and q["verify_precision"] == 0
    assert q["roots_with_truth"] == 0
    for key in ("negatives_lookalike", "negatives_true", "true_profile_recall"):
        assert key not in q
    empty = group_quality(truth, [{"root_id": R(0)}])
    assert empty["groups"] == 0 and empty["positives"] == 0
    assert not {"verify_precision", "positive_lookalike_share", "negatives_lookalike",
                "true_profile_recall"} & set(empty)
    # a document the truth table does not know is counted, and classified as other
    q = group_quality(truth, [{"root_id": R(0), "contexts": [ctx("elsewhere-1")]}])
    assert q["count_unknown_docs"] == 1 and q["count_positive_other"] == 1


def test_corpora_without_truth_give_none(tmp_path, corpus):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"id": f"d{i}", "text": "some text"})
                               for i in range(3)) + "\n")
    assert load_truth(plain) is None
    # truth on some records only (a user corpus with a stray "kind" field) is no truth
    lines = corpus[0].read_text().splitlines()
    rec = json.loads(lines[3])
    del rec["lookalike_of"]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:3] + [json.dumps(rec)] + lines[4:]) + "\n")
    assert load_truth(partial) is None
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"id": "x", "text": "t", "kind": "novel", "entity": None,
                               "lookalike_of": None}) + "\n")
    assert load_truth(odd) is None
    assert load_truth(tmp_path / "missing.jsonl") is None
    assert load_truth(tmp_path / "corpus.parquet") is None
    assert load_truth(tmp_path) is None
