"""The comparison report: a terminal table, report.md, PNG plots and report.html (inline plots).

Input is a plain results dict (what ``compare`` collects, or what ``from_mlflow`` reads back)::

    {"spec": name, "config_hash": h, "rows": {label: {"eval": {bench: {length: score}},
                                                      "stages": [{metric: value}, ...]}}}
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

BASELINE = "base"
REFERENCE = "entropylong"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


CONTROL = " (control)"   # a control method's label in tables, plots and the dashboard note


def control_names() -> set[str]:
    """Registered methods that are controls (``oracle``, ``random_context``): their registry
    description starts with ``control:``. A row is a control when its label is one of them."""
    from harness.registry import entries

    return {n for n, (_, desc) in entries("method").items() if desc.startswith("control:")}


def shown(label: str, controls: set[str]) -> str:
    """A method label as the report shows it: a control's with `` (control)``."""
    return label + CONTROL if label in controls else label


def control_note(labels, controls: set[str] | None = None) -> str | None:
    """One sentence on the controls among ``labels``, or None when there are none."""
    controls = control_names() if controls is None else controls
    found = [lab for lab in labels if lab in controls]
    if not found:
        return None
    return (f"Controls ({', '.join(found)}): not data-construction methods but a ceiling "
            f"(oracle: the true contexts from ground truth) and a floor (random_context: random "
            f"contexts); a world or recipe in which the oracle does not beat the random control "
            f"cannot tell methods apart.")


NOT_RUN = "not_run"    # "<bench>/not_run/<task>: <reason>" keys (harness.evaluation.runner)
SUBSTITUTE = "substitute"   # "<bench>/substitute/<what>: <label>" keys (the same)
ALL_TASKS = "all tasks"     # "<bench>/not_run/all tasks: <reason>": nothing ran at a length
_AVG_LABEL = re.compile(r"avg(\d+)")


def _is_average(rest: str) -> bool:
    return rest in ("", "avg") or bool(_AVG_LABEL.fullmatch(rest))


def _is_note(rest: str) -> bool:
    return rest.startswith((NOT_RUN + "/", SUBSTITUTE + "/"))


def table_names(rows: dict) -> list[str]:
    """A table per benchmark (its averages, with its not-run and substitute notes) and one
    per other metric of a loss-scored benchmark (``probe/gain``, ``probe/nll``)."""
    names = set()
    for r in rows.values():
        for key in r.get("eval", {}):
            head, _, rest = key.partition("/")
            names.add(head if head == SHORT_CONTEXT or _is_average(rest) or _is_note(rest)
                      else key)
    return sorted(names)


def _bench_view(ev: dict, name: str) -> tuple[dict[int, float | None], dict[int, str],
                                              dict[str, set[int]], list[str]]:
    """One method's scores of table ``name`` per length (a benchmark's from ``<bench>`` and
    the labelled ``<bench>/avg<N>`` keys; a metric's from ``<bench>/<metric>``), the label per
    length (``avg`` or ``avg<N>``), the tasks left out (``"<task>: <reason>"`` -> lengths)
    and the benchmark's data substitutions (``"<what>: <label>"``)."""
    bench, _, metric = name.partition("/")
    scores: dict[int, float | None] = {}
    labels: dict[int, str] = {}
    missing: dict[str, set[int]] = {}
    subs: list[str] = []
    for key, per in ev.items():
        head, _, rest = key.partition("/")
        if head != bench:
            continue
        if rest.startswith(NOT_RUN + "/"):
            missing.setdefault(rest[len(NOT_RUN) + 1:], set()).update(int(L) for L in per)
            continue
        if rest.startswith(SUBSTITUTE + "/"):
            subs.append(rest[len(SUBSTITUTE) + 1:])
            continue
        if (rest != metric) if metric else not _is_average(rest):
            continue
        label = "avg" if metric else (rest or "avg")
        for L, v in per.items():
            if v is not None or int(L) not in scores:
                scores[int(L)], labels[int(L)] = v, label
    return scores, labels, missing, subs


def _scored(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def not_run_reason(missing: dict[str, set[int]], length: int) -> str:
    """Why a cell has no score: the reasons recorded for its length."""
    why = sorted(t for t, ls in missing.items() if length in ls)
    whole = [t.partition(": ")[2] for t in why if t.startswith(ALL_TASKS + ": ")]
    if whole:
        return "; ".join(whole)
    if why:
        return "no task ran: " + "; ".join(why)
    return ("no score and no reason recorded at this length (typically a length past the "
            "model's context; results read back from MLflow carry no reasons)")


def ran_nowhere(results: dict) -> dict[str, str]:
    """``{table name: sentence}`` for each benchmark (or metric) that has no score for any
    method at any length: why, from the reasons recorded, instead of an empty plot."""
    rows = results["rows"]
    out = {}
    for name in table_names(rows):
        if name == SHORT_CONTEXT:
            continue
        views = [_bench_view(r.get("eval", {}), name) for r in rows.values()]
        if any(_scored(v) for sc, _, _, _ in views for v in sc.values()):
            continue
        by_reason: dict[str, set[str]] = {}
        for _, _, missing, _ in views:
            for t in missing:
                task, _, why = t.partition(": ")
                by_reason.setdefault(why, set()).add(task)
        why = "; ".join(f"{', '.join(sorted(ts))}: {r}" for r, ts in by_reason.items()) \
            or "no scores and no reasons recorded"
        out[name] = f"{name} ran for no method at any length, so it has no plot. Why: {why}"
    return out


SHORT_CONTEXT = "short_context"   # "short_context/<task>" -> {"0": score} (harness.evaluation.runner)


def _short_context_table(rows: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Short-context check: lm-eval stock tasks per method, the mean over the tasks that ran
    and its change against the base model; not-run cells footnoted with their reason."""
    per: dict[str, dict[str, float | None]] = {}
    why: dict[str, dict[str, str]] = {}
    tasks: list[str] = []
    for label, r in rows.items():
        for key, v in r.get("eval", {}).items():
            head, _, rest = key.partition("/")
            if head != SHORT_CONTEXT:
                continue
            if rest.startswith(NOT_RUN + "/"):
                task, _, reason = rest[len(NOT_RUN) + 1:].partition(": ")
                why.setdefault(label, {})[task] = reason
            else:
                task = rest
                per.setdefault(label, {})[task] = next(iter(v.values()), None)
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        return {}
    header = ["method", *tasks, "mean (tasks run)", "Δ base (mean)"]
    body, notes = [], []

    def mean(label):
        vals = [per.get(label, {}).get(t) for t in tasks]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    base_ran = {t for t, v in per.get(BASELINE, {}).items() if v is not None}
    controls = control_names()
    for label in rows:
        cells = []
        for t in tasks:
            v = per.get(label, {}).get(t)
            if v is None:
                reason = why.get(label, {}).get(t, "not run: no score")
                if reason not in notes:
                    notes.append(reason)
                cells.append(f"not run [{notes.index(reason) + 1}]")
            else:
                cells.append(_fmt(v))
        ran = {t for t, v in per.get(label, {}).items() if v is not None}
        common = sorted(ran & base_ran)
        delta = None
        if label != BASELINE and common:
            delta = (sum(per[label][t] for t in common)
                     - sum(per[BASELINE][t] for t in common)) / len(common)
        body.append([shown(label, controls), *cells, _fmt(mean(label)), _fmt(delta)])
    import textwrap

    for i, n in enumerate(notes, 1):
        for line in textwrap.wrap(f"[{i}] {n}", 72, subsequent_indent="    "):
            body.append([line] + [""] * (len(header) - 1))
    title = ("short-context check (lm-eval stock tasks, 0-shot; Δ base over the tasks both "
             "ran)")
    return {title: (header, body)}


def score_tables(results: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per benchmark: header and rows (label, score per length, Δ vs base, Δ vs EntropyLong).

    An average over fewer tasks than the reference's is labelled with its count: in the
    table's name (``ruler (avg11 = 11 of the reference's tasks)``) and, where a table mixes
    counts, in the cell (``81.2 avg11``); Δ columns only compare like with like. A cell that
    was not run shows ``not run [n]`` and a footnote row ``[n] ...`` says why, as do the tasks
    each labelled average leaves out."""
    rows = results["rows"]
    out = {}
    controls = control_names()
    for b in table_names(rows):
        if b == SHORT_CONTEXT:
            out.update(_short_context_table(rows))
            continue
        views = {label: _bench_view(r.get("eval", {}), b) for label, r in rows.items()}
        lengths = sorted({L for sc, _, _, _ in views.values() for L in sc}
                         | {L for _, _, missing, _ in views.values()
                            for ls in missing.values() for L in ls})
        labels_used = sorted({lab for _, labs, _, _ in views.values()
                              for L, lab in labs.items() if lab != "avg"},
                             key=lambda x: int(x[3:]))
        mixed = len({lab for _, labs, _, _ in views.values() for lab in labs.values()}) > 1
        header = ["method"] + [str(L) for L in lengths] + ["Δ base (longest)", "Δ EntropyLong (longest)"]
        body, notes = [], []

        def note(text: str) -> str:
            if text not in notes:
                notes.append(text)
            return f"[{notes.index(text) + 1}]"

        for label, (sc, labs, missing, _) in views.items():
            longest = sc.get(lengths[-1]) if lengths else None

            def delta(other):
                if other == label or other not in views or not lengths:
                    return None
                o_sc, o_labs, _, _ = views[other]
                o = o_sc.get(lengths[-1])
                if longest is None or o is None or o_labs.get(lengths[-1]) != labs.get(
                        lengths[-1]):
                    return None
                return longest - o

            cells = []
            for L in lengths:
                v = sc.get(L)
                if not _scored(v):
                    # one footnote per reason: cells not run for the same reason share it
                    cells.append("not run " + note(not_run_reason(missing, L)))
                    continue
                cell = _fmt(v)
                if mixed and labs.get(L, "avg") != "avg":
                    cell += f" {labs[L]}"
                cells.append(cell)
            body.append([shown(label, controls)] + cells
                        + [_fmt(delta(BASELINE)), _fmt(delta(REFERENCE))])
            for lab in sorted(set(labs.values()) - {"avg"}):
                at = [L for L in lengths if labs.get(L) == lab and sc.get(L) is not None]
                by_reason: dict[str, list[str]] = {}
                for t in sorted(t for t, ls in missing.items() if any(L in ls for L in at)):
                    task, _, why = t.partition(": ")
                    by_reason.setdefault(why, []).append(task)
                left = "; ".join(f"{', '.join(ts)}: {why}" for why, ts in by_reason.items())
                if at:
                    note(f"{b} {lab}: mean of {lab[3:]} tasks, fewer than the reference's; "
                         f"not comparable with a published full average"
                         + ("; left out: " + left if left else ""))
        subs: dict[str, list[str]] = {}
        for label, (_, _, _, used) in views.items():
            for text in used:
                subs.setdefault(text, []).append(label)
        for text, labels in subs.items():
            note(f"substitute data ({', '.join(labels)}): {text}")
        import textwrap

        for i, n in enumerate(notes, 1):   # wrapped, so the method column stays narrow
            for j, line in enumerate(textwrap.wrap(f"[{i}] {n}", 72,
                                                   subsequent_indent="    ")):
                body.append([line] + [""] * (len(header) - 1))
        name = b if not labels_used else f"{b} ({', '.join(labels_used)}: average over fewer " \
            f"tasks than the reference's)"
        if subs:
            name += " [substitute data, see the footnotes]"
        out[name] = (header, body)
    return out


def stage_table(results: dict, keys: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "stage"] + keys
    body = []
    controls = control_names()
    for label, r in results["rows"].items():
        for k, st in enumerate(r.get("stages", [])):
            body.append([shown(label, controls), str(k)] + [_fmt(st.get(key)) for key in keys])
    return header, body


def _md(header, body) -> str:
    """A markdown table; footnote rows (text in the first cell only, ``[n] ...`` and its
    wrapped lines) follow the table as one paragraph per note."""
    rows = [r for r in body if any(r[1:])]
    notes: list[str] = []
    for r in body:
        if not any(r[1:]):
            line = r[0].strip()
            if line.startswith("[") or not notes:
                notes.append(line)
            else:
                notes[-1] += " " + line
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"{n}  " for n in notes]
    return "\n".join(lines)


def _text(header, body) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])]
                     + [fmt.format(*row) for row in body])


# The per-stage tables of the report: (title, metric keys). A key no method has is left out.
STAGE_SECTIONS = [
    ("Budget: loss-carrying tokens per stage (equal for every method) and packing",
     ["loss_tokens", "pad_tokens", "rows", "groups", "heldout_groups", "roots",
      "roots_repeated"]),
    ("Verification", ["candidates", "accept_rate", "verify_precision",
                      "positive_lookalike_share", "true_profile_recall", "contexts_truncated",
                      "negatives_per_positive", "negatives_lookalike", "dI_positive_mean",
                      "dI_negative_mean", "dI_negative_p90"]),
    ("Loss gaps (nats): fixed probe set, and the stage's held-out groups (out of sample) "
     "by the checkpoint entering and the one leaving the stage",
     ["loss_gap_probe", "loss_gap_frontier_entering", "loss_gap_frontier", "frontier_groups"]),
    ("Curriculum and training", ["anchors_per_1k", "anchor_entropy_mean", "tau_H_mean",
                                 "train_loss", "short_loss", "construct_seconds",
                                 "train_seconds"]),
]
STAGE_KEYS = [k for _, keys in STAGE_SECTIONS for k in keys]


def stage_sections(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The per-stage tables with the keys some method reported."""
    have = {k for r in results["rows"].values() for st in r.get("stages", []) for k in st}
    out = []
    for title, keys in STAGE_SECTIONS:
        keys = [k for k in keys if k in have]
        if keys:
            h, body = stage_table(results, keys)
            body = [row for row in body if any(c != "-" for c in row[2:])]
            if body:
                out.append((title, h, body))
    return out


def cross_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """Frontier loss gaps of each verifying method's held-out groups (rows: whose data, and
    stage) under every method's checkpoint leaving that stage (columns)."""
    cross = results.get("cross") or {}
    if not cross:
        return None
    models = sorted({m for per_stage in cross.values() for d in per_stage.values() for m in d})
    controls = control_names()
    header = ["data of", "stage"] + [f"gap under {shown(m, controls)}" for m in models]
    body = []
    for data_label, per_stage in cross.items():
        for k in sorted(per_stage, key=int):
            body.append([shown(data_label, controls), str(k)]
                        + [_fmt(per_stage[k].get(m)) for m in models])
    return header, body


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    rows = results["rows"]
    controls = control_names()
    nowhere = ran_nowhere(results)    # a sentence in the report instead of an empty frame
    # short-context: a table only
    for b in (b for b in table_names(rows) if b != SHORT_CONTEXT and b not in nowhere):
        fig, ax = plt.subplots(figsize=(6, 4))
        used = set()
        for label, r in rows.items():
            scores, labs, _, _ = _bench_view(r.get("eval", {}), b)
            sc = sorted((L, v) for L, v in scores.items() if _scored(v))
            partial = sorted({labs[L] for L, _ in sc} - {"avg"})
            used.update(partial)
            if sc:   # a labelled (partial) average says so in the legend
                ax.plot([x for x, _ in sc], [y for _, y in sc], marker="o",
                        label=shown(label, controls)
                        + (f" ({', '.join(partial)})" if partial else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        tag = f" {', '.join(sorted(used))}" if used else ""
        ax.set_ylabel(f"{b}{tag} score")
        ax.set_title(f"{b}{tag}: score vs length" + (
            "\n(average over fewer tasks than the reference's)" if used else ""))
        files.append(_save(fig, ax, out_dir / f"score_{b.replace('/', '_')}.png"))
    for key, ylabel in [("loss_gap_probe", "loss gap on the probe set (nats)"),
                        ("loss_gap_frontier", "loss gap on the stage's held-out groups (nats)"),
                        ("verify_precision", "precision of accepted contexts"),
                        ("anchors_per_1k", "anchors per 1K tokens"),
                        ("accept_rate", "verification accept rate"),
                        ("dI_positive_mean", "mean ΔI of positives")]:
        series = {label: [(k, st.get(key)) for k, st in enumerate(r.get("stages", []))
                          if st.get(key) is not None and not math.isnan(st.get(key))]
                  for label, r in rows.items()}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o",
                    label=shown(label, controls))
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("stage")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} per stage")
        files.append(_save(fig, ax, out_dir / f"stage_{key}.png"))
    return files


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _said(nowhere: dict[str, str], table: str) -> list[str]:
    """The ran-nowhere sentence of a score table (its title may carry a label suffix)."""
    return [x for n, x in nowhere.items() if table == n or table.startswith(n + " ")]


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path, str]:
    """report.md, report.html (plots inline) and the terminal text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(results, out_dir / "plots")
    md = [f"# Comparison report: {results.get('spec', '')}",
          f"config hash `{results.get('config_hash', '')}`", ""]
    text = []
    note = control_note(results["rows"])
    if note:
        md += [note, ""]
        text += [note, ""]
    nowhere = ran_nowhere(results)
    tables = score_tables(results)
    for b, (h, body) in tables.items():
        said = _said(nowhere, b)
        md += [f"## {b}", "", _md(h, body), ""] + [f"*{x}*" for x in said] + [""] * bool(said)
        text += [f"{b}", _text(h, body)] + said + [""]
    for title, h, body in stage_sections(results):
        md += [f"## {title}", "", _md(h, body), ""]
        text += [title, _text(h, body), ""]
    cross = cross_table(results)
    if cross:
        title = ("Cross-scoring: frontier loss gap of each method's held-out groups under every "
                 "method's checkpoint (same data, different models)")
        md += [f"## {title}", "", _md(*cross), ""]
        text += [title, _text(*cross), ""]
    md += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [
        f"No plot for {n}: it ran nowhere (see its table)." for n in nowhere]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_parts = ["<html><head><meta charset='utf-8'><title>report</title><style>"
                  "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
                  "</style></head><body>", f"<h1>Comparison report: {html.escape(results.get('spec', ''))}</h1>"]
    if note:
        html_parts.append(f"<p>{html.escape(note)}</p>")
    html_tables = list(tables.items()) + [
        (title, (h, body)) for title, h, body in stage_sections(results)]
    if cross:
        html_tables.append(("cross-scoring", cross))
    for b, (h, body) in html_tables:
        html_parts.append(f"<h2>{html.escape(b)}</h2><table><tr>"
                          + "".join(f"<th>{html.escape(x)}</th>" for x in h) + "</tr>"
                          + "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r)
                                    + "</tr>" for r in body) + "</table>"
                          + "".join(f"<p><em>{html.escape(x)}</em></p>"
                                    for x in _said(nowhere, b)))
    for p in pngs:
        data = base64.b64encode(p.read_bytes()).decode()
        html_parts.append(f"<h3>{p.stem}</h3><img src='data:image/png;base64,{data}'/>")
    html_parts.append("</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text("\n".join(html_parts))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return md_path, html_path, "\n".join(text)


# MLflow keys of earlier versions -> (bench, label) of today's scheme (README "MLflow keys")
LEGACY_KEYS = {("probe_gain", "avg"): ("probe", "gain")}


def _loss_scored(bench: str) -> bool:
    from harness.config import BenchmarkEntry
    from harness.evaluation.runner import scored_by_loss
    from harness.registry import entries

    return bench in entries("benchmark") and scored_by_loss(BenchmarkEntry(name=bench))


def _substitutes_from_params(params: dict, ev: dict) -> dict:
    """The substitute notes of a run's benchmarks, from its ``provenance.<bench>.substitutes``
    params (``harness.evaluation.runner.provenance_params``), at the lengths it has scores."""
    out = {}
    for key, value in params.items():
        bench, dot, field = key.removeprefix("provenance.").partition(".")
        if not key.startswith("provenance.") or not dot or field != "substitutes":
            continue
        lengths = {L for k, per in ev.items() if k.partition("/")[0] == bench for L in per}
        try:
            subs = json.loads(value)
        except ValueError:    # a value MLflow cut at its length limit
            continue
        for what, text in subs.items():
            out[f"{bench}/{SUBSTITUTE}/{what}: {text}"] = {L: None for L in sorted(lengths)}
    return out


def from_mlflow(tracking, parent_run_id: str) -> dict:
    """Rebuild the results dict from the parent run and its children (MLflow only)."""
    parent = tracking.get_run(parent_run_id)
    rows = {}
    for child in sorted(tracking.children(parent_run_id), key=lambda r: r.info.start_time):
        label = child.data.tags.get("method_label", child.info.run_name)
        ev: dict = {}
        stages: dict[int, dict] = {}
        for key in child.data.metrics:
            if key.startswith("eval/"):
                _, bench, task, length = key.split("/", 3)
                if (bench, task) in LEGACY_KEYS:                  # runs logged before 0.2
                    bench, task = LEGACY_KEYS[bench, task]
                if task == "avg" or _AVG_LABEL.fullmatch(task):   # avg11: a labelled average
                    ev.setdefault(bench if task == "avg" else f"{bench}/{task}", {})[
                        int(length)] = child.data.metrics[key]
                elif bench == SHORT_CONTEXT or _loss_scored(bench):
                    # eval/short_context/<task>/0; a loss benchmark's eval/probe/gain/<L>
                    ev.setdefault(f"{bench}/{task}", {})[int(length)] = child.data.metrics[key]
            elif key.startswith("stage/"):
                for step, value in tracking.metric_history(child.info.run_id, key):
                    stages.setdefault(step, {})[key[len("stage/"):]] = value
        ev.update(_substitutes_from_params(child.data.params, ev))
        rows[label] = {"eval": ev, "stages": [stages[k] for k in sorted(stages)]}
    cross: dict = {}
    for key in parent.data.metrics:
        if key.startswith("cross/"):
            _, data_label, model_label = key.split("/", 2)
            for step, value in tracking.metric_history(parent.info.run_id, key):
                cross.setdefault(data_label, {}).setdefault(str(step), {})[model_label] = value
    return {"spec": parent.data.tags.get("spec", ""),
            "config_hash": parent.data.tags.get("config_hash", ""), "rows": rows,
            "cross": cross}
