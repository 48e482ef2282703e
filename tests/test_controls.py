"""The two controls on the small sandbox: ``oracle`` (the true profiles from ground truth, the
ceiling) and ``random_context`` (random chunks of other documents, the floor), and how the
report and the dashboard label them."""
import json
from pathlib import Path

import numpy as np
import pytest

from test_methods import micro_spec, monkeypatch_module, sandbox_dir  # noqa: F401 (fixtures)

CONTROLS = ("oracle", "random_context")


def _spec(tmp, sandbox, **over):
    methods = [{"name": "oracle"}, {"name": "random_context"}, {"name": "entropylong"}]
    return micro_spec(tmp, sandbox, methods=methods, **over)


@pytest.fixture(scope="module")
def resources(tmp_path_factory, sandbox_dir):  # noqa: F811
    from transformers import AutoTokenizer
    from harness.construction.driver import prepare_resources
    from harness.experiments.wiring import resolve_inputs
    from harness.layout import cache_dir
    spec = _spec(tmp_path_factory.mktemp("c"), sandbox_dir)
    base, corpus = resolve_inputs(spec)
    return prepare_resources(spec, AutoTokenizer.from_pretrained(str(base)), corpus,
                             cache_dir(spec))


@pytest.fixture(scope="module")
def unindexed(resources):
    """The resources with the spec's retrieval chunks but without their FAISS index:
    ``random_context`` reads only the chunks and their tokens, and embedding them costs a
    minute on 2 busy cores (the slow test checks that the index changes nothing)."""
    import copy
    from harness.construction.driver import ChunkSet
    from harness.data.corpus import chunk_documents
    res, r = copy.copy(resources), resources.spec.retrieval
    chunks = chunk_documents(res.store, r.chunk_unit, r.chunk_size, tokenizer=res.tokenizer)
    toks = [res.store.doc_tokens(c.doc_index)[c.start:c.end] for c in chunks]
    res._chunksets = {(r.chunk_unit, r.chunk_size): ChunkSet(chunks, None, toks)}
    return res


@pytest.fixture(scope="module")
def built(tmp_path_factory, sandbox_dir, resources, unindexed):  # noqa: F811
    """Stage 0 of both controls."""
    from harness.experiments.wiring import construct
    spec = _spec(tmp_path_factory.mktemp("c"), sandbox_dir)
    return spec, {"oracle": construct(spec, "oracle", 0, resources=resources, progress=False),
                  "random_context": construct(spec, "random_context", 0, resources=unindexed,
                                              progress=False)}


def _dataset(path):
    from harness.construction.stage_data import StageDataset
    ds = StageDataset(path)
    return ds, ds.groups()


def _ctx(spec, res, seed=0):
    from harness.api import StageContext
    return StageContext(spec=spec, stage=0, target_length=spec.stages.target_length,
                        token_budget=spec.stages.tokens_per_stage, seed=seed, resources=res,
                        screening_model=None, params={}, work_dir=Path("."))


def test_controls_are_registered_as_controls():
    from harness.registry import entries, resolve
    known = entries("method")
    for name in CONTROLS:
        assert known[name][1].startswith("control:")
        m = resolve("method", name)()
        assert m.name == name and m.screening == "none"
        assert m.params.model_dump() == ({"fill": "random"} if name == "oracle" else {})


def test_oracle_contexts_are_the_true_profiles_of_the_root(built, resources):
    """The one positive is the true profile, whole; the rest of the group is filled with
    random chunks of other documents (role ``filler``, not scored) up to T, as
    random_context's groups are."""
    spec, out = built
    T = spec.stages.target_length
    truth = resources.truth()
    cs = resources.chunkset()
    longest = max(len(t) for t in cs.tokens)
    ds, groups = _dataset(out["oracle"])
    assert ds.manifest["budget_met"] and groups
    for g in groups:
        root = truth[g["root_id"]]
        assert root.kind == "reference"
        pos = [c for c in g["contexts"] if c["role"] == "positive"]
        fill = [c for c in g["contexts"] if c["role"] != "positive"]
        assert [c["doc_id"] for c in pos] == [truth.profile_of[root.entity]]
        assert pos[0]["source"] == "oracle"
        assert fill and all(c["role"] == "filler" and c["source"] == "random"
                            and c["doc_id"] != g["root_id"] for c in fill)
        # the context is the profile document, whole, before the root
        c = pos[0]
        profile = resources.store.doc_tokens(resources.store.doc_index(c["doc_id"]))
        row = ds.input_ids[g["row"], g["start"]:g["end"]]
        if "truncated_to" not in g:    # the group that completes the budget may be cut
            assert np.array_equal(row[c["start"]:c["end"]], profile)
            assert T - longest < g["end"] - g["start"] <= T
    # the profile is shuffled in among the fillers: its distance to the root varies
    assert len({g["root_start"] - c["end"] for g in groups for c in g["contexts"]
                if c["role"] == "positive"}) > 1
    gt = ds.manifest["ground_truth"]
    assert gt["verify_precision"] == 1.0 and gt["positive_lookalike_share"] == 0.0
    assert gt["true_profile_recall"] == 1.0
    st = ds.manifest["stats"]
    assert st["roots"] > len(groups)                # not every root is a reference


def test_oracle_without_fill_is_profile_and_root(resources):
    from methods.oracle import Oracle

    spec = resources.spec
    bare, filled = Oracle({"fill": "none"}), Oracle()
    ctx = _ctx(spec, resources)
    truth = resources.truth()
    roots = [i for i, d in enumerate(resources.store.ids)
             if getattr(truth.get(d), "kind", None) == "reference"][:5]
    for a, b in zip(bare.process(ctx, roots), filled.process(ctx, roots)):
        if not a.groups:
            continue
        (ga,), (gb,) = a.groups, b.groups
        assert [c["role"] for c in ga.provenance["contexts"]] == ["positive"]
        assert len(gb.provenance["contexts"]) > 1 and len(gb.tokens) > len(ga.tokens)


def test_oracle_pairs_fill_puts_every_profile_before_its_reference(resources):
    """``fill: pairs``: the root's true profile and other entities' (profile, reference)
    pairs, whole documents, profiles first and references after, the root last: every fill
    reference has its profile earlier in the group, the distances spread, the group fills T
    up to less than one pair, and another seed draws other pairs."""
    from methods.oracle import Oracle

    spec, truth, store = resources.spec, resources.truth(), resources.store
    T = spec.stages.target_length
    roots = [i for i, d in enumerate(store.ids)
             if getattr(truth.get(d), "kind", None) == "reference"][:12]
    m = Oracle({"fill": "pairs"})
    results = m.process(_ctx(spec, resources), roots)
    distances, groups = [], [g for res in results for g in res.groups]
    assert groups
    for res, g in zip([x for x in results if x.groups], groups):
        cs = g.provenance["contexts"]
        pos = [c for c in cs if c["role"] == "positive"]
        assert len(pos) == 1 and pos[0]["source"] == "oracle"
        fill = [c for c in cs if c["role"] == "filler"]
        assert fill and all(c["source"] == "oracle-pair" for c in fill)
        first_ref = min(c["start"] for c in fill if c["pair"] == "reference")
        # profiles (the root's among them) all come before every reference
        assert max(c["end"] for c in cs if c.get("pair") != "reference") <= first_ref
        for c in fill:
            toks = store.doc_tokens(store.doc_index(c["doc_id"]))
            assert g.tokens[c["start"]:c["end"]] == [int(t) for t in toks]
            if c["pair"] == "reference":
                prof = [p for p in fill if p["pair"] == "profile" and p["entity"] == c["entity"]]
                assert len(prof) == 1 and truth.get(prof[0]["doc_id"]).kind == "profile"
                assert truth.profile_of[c["entity"]] == prof[0]["doc_id"]
                distances.append(c["start"] - prof[0]["end"])
        assert res.stats["fill_pairs"] == len(fill) // 2
        assert len(g.tokens) > T - 400 and len(g.tokens) <= T
        assert g.tokens[g.provenance["root_start"]:] == [
            int(t) for t in store.doc_tokens(store.doc_index(g.provenance["root_id"]))][:T]
    assert min(distances) < T / 4 and max(distances) > T / 2
    other = m.process(_ctx(spec, resources, seed=1), roots)
    assert [g.tokens for x in other for g in x.groups] != [g.tokens for g in groups]


def test_random_context_never_uses_the_root_and_fills_the_group(built, unindexed):
    spec, out = built
    T = spec.stages.target_length
    cs = unindexed.chunkset()
    longest = max(len(t) for t in cs.tokens)
    ds, groups = _dataset(out["random_context"])
    assert ds.manifest["budget_met"] and groups
    for g in groups:
        ids = [c["chunk_id"] for c in g["contexts"]]
        assert len(ids) == len(set(ids))
        assert all(c["doc_id"] != g["root_id"] and c["source"] == "random"
                   for c in g["contexts"])
        assert all(cs.chunks[i].doc_id != g["root_id"] for i in ids)
        if "truncated_to" not in g:   # filled to T, up to less than one chunk
            assert T - longest < g["end"] - g["start"] <= T
    assert "verify_precision" in ds.manifest["ground_truth"]   # scored: the chance rate


def test_random_context_follows_the_seed(built, unindexed):
    from methods.random_context import RandomContext
    spec, _ = built
    roots = list(range(12))

    def draws(seed):
        res = RandomContext().process(_ctx(spec, unindexed, seed), roots)
        return [[c["chunk_id"] for g in r.groups for c in g.provenance["contexts"]]
                for r in res]
    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_oracle_needs_ground_truth(tmp_path, sandbox_dir, resources):  # noqa: F811
    """A corpus without the truth fields (a user corpus) is refused with a clear error, at
    the first roots, before anything is written."""
    from harness.api import SpecError
    from harness.experiments.wiring import construct
    from harness.layout import dataset_dir
    corpus = tmp_path / "user.jsonl"
    src = Path(resources.corpus_path).read_text().splitlines()
    corpus.write_text("\n".join(json.dumps({"id": r["id"], "text": r["text"]})
                                for r in map(json.loads, src)) + "\n")
    spec = _spec(tmp_path, sandbox_dir, **{"corpus.path": str(corpus)})
    with pytest.raises(SpecError, match=r"method 'oracle'.*needs a corpus with ground truth "
                                        r"\(the sandbox"):
        construct(spec, "oracle", 0, progress=False)
    assert not (dataset_dir(spec, "oracle", 0) / "manifest.json").exists()


@pytest.mark.slow
def test_controls_are_deterministic_and_meet_entropylongs_budget(tmp_path, sandbox_dir,
                                                                  built, resources):  # noqa: F811
    """Built again, with the real retrieval index: the same datasets; and the loss-token
    budget of EntropyLong's stage (which embeds the chunks and screens: minutes here)."""
    from harness.experiments.wiring import construct
    spec, out = built
    again = _spec(tmp_path, sandbox_dir)
    man = {m: json.loads((p / "manifest.json").read_text()) for m, p in out.items()}
    for m in CONTROLS:
        b = json.loads((construct(again, m, 0, resources=resources, progress=False)
                        / "manifest.json").read_text())
        assert b["dataset_sha256"] == man[m]["dataset_sha256"], m
    ent = json.loads((construct(spec, "entropylong", 0, resources=resources, progress=False)
                      / "manifest.json").read_text())
    for m in CONTROLS:
        assert man[m]["loss_tokens"] == ent["loss_tokens"] == ent["loss_budget"], m
        assert man[m]["rows"] == ent["rows"]


def test_report_and_dashboard_label_controls(tmp_path):
    from harness.experiments import report as R
    from harness.experiments.dashboard import controls_line
    st = {"loss_tokens": 4000.0, "verify_precision": 1.0}
    rows = {label: {"eval": {"probe": {"512": 0.5}}, "stages": [st]}
            for label in ("base", "entropylong", "oracle", "random_context")}
    results = {"spec": "t", "config_hash": "h", "rows": rows}
    (_, body), = R.score_tables(results).values()
    assert [r[0] for r in body] == ["base", "entropylong", "oracle (control)",
                                    "random_context (control)"]
    _, body = R.stage_table(results, ["loss_tokens"])
    assert [r[0] for r in body][2:] == ["oracle (control)", "random_context (control)"]
    md, _, text = R.write_report(results, tmp_path)
    assert "Controls (oracle, random_context)" in md.read_text() and "ceiling" in text
    del rows["oracle"], rows["random_context"]
    assert "Controls" not in R.write_report(results, tmp_path / "plain")[0].read_text()
    assert "oracle, random_context" in controls_line()
