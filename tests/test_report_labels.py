"""The comparison report with labelled partial averages and not-run footnotes: what
``harness.evaluation.runner.compare_averages`` hands to compare, through ``harness.experiments.report``'s tables,
plots and the MLflow round trip (old ``avg`` keys still read)."""
from pathlib import Path

import pytest

from harness.experiments import report as R

REASON_QA1 = "needs SQuAD v2 dev (dev-v2.0.json): set params.squad_path"
REASON_QA2 = "needs HotpotQA distractor dev: set params.hotpotqa_path"


def results() -> dict:
    """base: evaluated at 8192 only (16384 past its context); the methods at both lengths,
    RULER on 11 of 13 tasks (qa_1/qa_2 without data), LongBench-v2 complete."""
    def ruler(lengths):
        ev = {"ruler/avg11": {str(L): 80.0 - L / 4096 for L in lengths}}
        for task, why in (("qa_1", REASON_QA1), ("qa_2", REASON_QA2)):
            ev[f"ruler/not_run/{task}: {why}"] = {str(L): None for L in lengths}
        return ev

    rows = {"base": {"eval": {**ruler([8192]), "longbench_v2": {"8192": 25.0}}},
            "entropylong": {"eval": {**ruler([8192, 16384]),
                                     "longbench_v2": {"8192": 27.0, "16384": 26.0}}},
            "policylong": {"eval": {**ruler([8192, 16384]),
                                    "longbench_v2": {"8192": 28.0, "16384": 27.5}}}}
    return {"spec": "t", "config_hash": "h", "rows": rows}


def footnotes(body) -> list[str]:
    """The footnote rows, their wrapped lines joined back."""
    notes: list[str] = []
    for r in body:
        if any(r[1:]):
            continue
        if r[0].startswith("["):
            notes.append(r[0])
        elif notes:
            notes[-1] += " " + r[0].strip()
    return notes


def test_partial_average_is_labelled_and_its_missing_tasks_footnoted():
    tables = R.score_tables(results())
    name = next(k for k in tables if k.startswith("ruler"))
    assert "avg11" in name and "fewer tasks than the reference" in name
    header, body = tables[name]
    assert header[:3] == ["method", "8192", "16384"]
    notes = footnotes(body)
    assert any("ruler avg11" in n and "qa_1: " + REASON_QA1 in n and "qa_2: " in n
               for n in notes)
    base = next(r for r in body if r[0] == "base")
    assert base[2].startswith("not run [")           # 16384: a footnote, not a bare "-"
    ref = base[2].split()[-1]
    assert any(n.startswith(ref) and "context" in n for n in notes)   # one note per reason
    pol = next(r for r in body if r[0] == "policylong")
    assert pol[1] == R._fmt(78.0)                      # one label in the table: plain cells
    assert pol[-1] == "0.000"                         # Δ EntropyLong: same label, same tasks
    assert "longbench_v2" in tables and not any(
        c.startswith("not run") for r in tables["longbench_v2"][1] if r[0] != "base"
        for c in r[1:])


def test_a_table_mixing_counts_labels_each_partial_cell():
    res = results()
    res["rows"]["policylong"]["eval"]["ruler"] = res["rows"]["policylong"]["eval"].pop(
        "ruler/avg11")                                   # this one ran all 13
    for k in [k for k in res["rows"]["policylong"]["eval"] if "/not_run/" in k]:
        del res["rows"]["policylong"]["eval"][k]
    name, (header, body) = next((k, v) for k, v in R.score_tables(res).items()
                                if k.startswith("ruler"))
    pol = next(r for r in body if r[0] == "policylong")
    ent = next(r for r in body if r[0] == "entropylong")
    assert not pol[1].endswith("avg11") and ent[1].endswith(" avg11")
    assert pol[-1] == "-"                 # Δ vs a different task set is not computed


def test_old_results_without_labels_render_as_before():
    res = {"rows": {"base": {"eval": {"probe": {"512": 0.5, "1024": 0.25}}},
                    "policylong": {"eval": {"probe": {"512": 0.75, "1024": 0.5}}}}}
    header, body = R.score_tables(res)["probe"]
    assert body == [["base", "0.500", "0.250", "-", "-"],
                    ["policylong", "0.750", "0.500", "0.250", "-"]]


def test_plots_name_the_partial_average(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = {}
    orig = matplotlib.axes.Axes.set_title

    def spy(self, title, *a, **k):
        seen.setdefault("titles", []).append(title)
        return orig(self, title, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", spy)
    files = R.plots(results(), tmp_path)
    assert {p.name for p in files} >= {"score_ruler.png", "score_longbench_v2.png"}
    assert any(t.startswith("ruler avg11") for t in seen["titles"])
    assert any(t.startswith("longbench_v2: ") for t in seen["titles"])


def test_mlflow_round_trip_reads_labelled_and_old_average_keys(tmp_path):
    from harness.tracking import Tracking, eval_avg_key

    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "t")
    with tracking.run("compare-x", tags={"spec": "t"}) as parent:
        with tracking.run("policylong", parent=parent,
                          tags={"method_label": "policylong"}) as child:
            child.log_metrics({eval_avg_key("ruler/avg11", 8192): 81.0,
                               eval_avg_key("longbench_v2", 8192): 28.0,
                               "eval/ruler/avg/4096": 90.0}, 0)   # a run from before labels
    got = R.from_mlflow(tracking, parent.run_id)["rows"]["policylong"]["eval"]
    assert got == {"ruler/avg11": {8192: 81.0}, "longbench_v2": {8192: 28.0},
                   "ruler": {4096: 90.0}}
    name = next(k for k in R.score_tables({"rows": {"policylong": {"eval": got}}})
                if k.startswith("ruler"))
    assert "avg11" in name


def test_write_report_carries_labels_and_footnotes_into_md_and_html(tmp_path):
    md, html_path, text = R.write_report(results(), tmp_path)
    for out in (md.read_text(), html_path.read_text(), text):
        assert "avg11" in out and "not run [" in out and "params.squad_path" in out
    assert Path(tmp_path / "plots" / "score_ruler.png").exists()
