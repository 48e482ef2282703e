"""The ``policylong`` command line. Thin: each subcommand calls into the library."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _tracking_uri(spec_uri: str | None, source: str, flag: str = "tracking.uri") -> str:
    """The URI a command will use, refused (exit 2) when MLflow cannot open its scheme."""
    from harness.tracking import check_uri, resolve_uri, uri_origin

    uri = resolve_uri(spec_uri)
    check_uri(uri, uri_origin(uri, f"{source}: {flag}" if source else flag))
    return uri


def _preflight(spec, source: str) -> None:
    """What a spec names outside itself, checked before any work: its tracking URI, and that
    its methods and benchmarks are registered (suggesting close names, ignoring case)."""
    from harness.registry import check_known

    _tracking_uri(spec.tracking.uri, source)
    for i, m in enumerate(spec.methods):
        check_known("method", m.name, f"{source}: methods.{i}.name")
    for i, b in enumerate(spec.eval.benchmarks):
        check_known("benchmark", b.name, f"{source}: eval.benchmarks.{i}.name")


def _check_method_label(spec, label: str, source: str) -> None:
    from harness.registry import UnknownName, did_you_mean

    labels = [m.label or m.name for m in spec.methods]
    if label not in labels:
        raise UnknownName(f"--method '{label}' is not a method of {source}"
                          f"{did_you_mean(label, labels)} (its methods: "
                          f"{', '.join(labels) or 'none'})")


def _check(args) -> int:
    from pathlib import Path

    import yaml

    from harness.config import load_spec, read_mapping, resolved, spec_hash

    if "study" in read_mapping(Path(args.spec), "spec"):
        from harness.experiments.study import load_study
        settings, spec = load_study(args.spec, args.override)
        _preflight(spec, args.spec)
        print(yaml.safe_dump({"study": settings.model_dump(mode="json")}, sort_keys=False),
              end="")
    else:
        spec = load_spec(args.spec, args.override)
        _preflight(spec, args.spec)
    print(yaml.safe_dump(resolved(spec), sort_keys=False), end="")
    print(f"# config hash: {spec_hash(spec)}")
    return 0


def _ls(args) -> int:
    from harness.registry import entries

    for kind in ("method", "benchmark"):
        items = entries(kind)
        print(f"{kind}s:")
        if not items:
            print("  (none registered)")
        for name, (target, desc) in sorted(items.items()):
            print(f"  {name:<22} {desc}  [{target}]")
    return 0


def _sandbox_build(args) -> int:
    from harness.sandbox.build import build_sandbox, sandbox_spec_from

    spec = sandbox_spec_from(args.spec, args.override)
    path = build_sandbox(spec, from_scratch=args.from_scratch, out_root=args.out,
                         check_every=args.check_every)
    print(path)
    return 0


def _construct(args) -> int:
    from harness.config import load_spec
    from pathlib import Path

    from harness.experiments.wiring import check_writable, construct

    spec = load_spec(args.spec, args.override)
    _preflight(spec, args.spec)
    _check_method_label(spec, args.method, args.spec)
    check_writable(Path(spec.output_dir), "output_dir")
    out = construct(spec, args.method, args.stage)
    print((out / "manifest.json").read_text())
    return 0


def _compare(args) -> int:
    from harness.experiments.compare import compare
    from harness.config import load_spec

    spec = load_spec(args.spec, args.override)
    _preflight(spec, args.spec)
    compare(spec)
    return 0


def _study(args) -> int:
    from harness.experiments.study import load_study, study

    _preflight(load_study(args.study, args.override)[1], args.study)
    study(args.study, args.override, seeds=args.seeds, report_only=args.report_only)
    return 0


def _tune(args) -> int:
    import json

    from harness.config import load_spec
    from harness.experiments import tune as T

    spec = load_spec(args.spec, args.override)
    _preflight(spec, args.spec)
    if args.trials is not None:
        spec = spec.model_copy(update={"tune": spec.tune.model_copy(
            update={"trials": args.trials})})
    if args.worker_only:
        T.run_worker(spec, args.worker_index)
        return 0
    summary = T.tune(spec, workers=args.workers, spec_path=args.spec, overrides=args.override)
    print(json.dumps(summary, indent=2))
    if "best_spec" in summary:
        print(f"# best spec: {summary['best_spec']}  (run: policylong compare "
              f"{summary['best_spec']})")
    return 0


def _sync(args) -> int:
    from harness.tracking import spool_dir, sync_spool

    sent = sync_spool(_tracking_uri(args.uri, "", "--uri"))
    for run_id, n in sent.items():
        print(f"{run_id}: {n} metrics uploaded")
    if not sent:
        print(f"nothing to upload ({spool_dir()} holds no spooled metrics)")
    return 0


def _report(args) -> int:
    from harness.config import load_spec
    from harness.experiments.report import from_mlflow, write_report
    from harness.tracking import Tracking

    spec = load_spec(args.spec, []) if args.spec else None
    uri = _tracking_uri(spec.tracking.uri if spec else None, args.spec or "")
    tracking = Tracking.of_run(uri, args.run_id)    # an unknown id: exit 2, nothing written
    results = from_mlflow(tracking, args.run_id)
    md, html_path, text = write_report(results, Path(args.out))
    print(text)
    print(md)
    return 0


def _dashboard(args) -> int:
    from harness.experiments.dashboard import run_dashboard

    return run_dashboard(_tracking_uri(args.uri, "", "--uri"), args.port, args.optuna_storage,
                         args.optuna_port)


def _kv(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--screening {text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def _bench(args) -> int:
    from harness.tools import bench

    everything = ["scoring", "verify", "index", "construct", "train", "eval", "overhead"]
    what = everything if args.what == "all" else [args.what]
    for w in what:
        print(f"# bench {w}", file=sys.stderr, flush=True)
        if w == "scoring":
            bench.bench_scoring(lengths=tuple(args.lengths), vocabs=tuple(args.vocabs),
                                device=args.device)
        elif w == "verify":
            bench.bench_verify(device=args.device)
        elif w == "index":
            bench.bench_index()
        elif w == "construct":
            bench.bench_construct()
        elif w == "train":
            bench.bench_train()
        elif w == "overhead":
            bench.bench_overhead(stages=args.stages, keep=args.keep,
                                 overrides=dict(_kv(x) for x in args.screening),
                                 spec_path=args.spec)
        elif w == "eval":
            bench.bench_eval()
        elif w == "scaling":   # minutes: not part of "all"
            bench.bench_scaling(plot=args.plot)
    return 0


def _cost(args) -> int:
    from harness.config import load_spec
    from harness.tools.cost import run_cost

    spec = load_spec(args.spec, args.override)
    run_cost(spec, args.gpu_tflops, calibrate_here=not args.no_calibrate,
             validate=args.validate)
    return 0


def _eval(args) -> int:
    from harness.evaluation import runner as E
    from harness.config import load_spec, resolved, spec_hash
    from harness.registry import check_known
    from harness.tracking import Tracking, check_reachable, resolve_uri

    overrides = list(args.override)
    if args.lengths:
        overrides.append(f"eval.lengths=[{', '.join(str(n) for n in args.lengths)}]")
    if args.backend:
        overrides.append(f"eval.backend={args.backend}")
    spec = load_spec(args.spec, overrides)
    _preflight(spec, args.spec)
    for n in args.bench or []:
        check_known("benchmark", n, "--bench")
    names = args.bench or [e.name for e in spec.eval.benchmarks]
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(
        update={"benchmarks": E.benchmark_entries(spec, names)})})
    # bad names fail before any run exists
    generated = [e.name for e in spec.eval.benchmarks if not E.scored_by_loss(e)]
    if generated:
        E.load_benchmarks(spec, generated)
    E.check_lengths(spec.eval.lengths, *E.model_limit(args.model), args.model)
    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    tracking = Tracking(uri, spec.tracking.experiment or spec.name)
    out = E.eval_dir(spec, args.model)
    with tracking.run(E.run_name(args.model), tags={"config_hash": spec_hash(spec)}) as tracker:
        tracker.log_config(resolved(spec))
        tracker.log_params({"eval.model": args.model,
                            "eval.run_benchmarks": ",".join(names)})
        E.evaluate_checkpoint(spec, args.model, out, tracker=tracker, cache=False)
    print(E.format_outputs(out))
    print(f"# results: {E.eval_dir(spec, args.model)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policylong", allow_abbrev=False,
                                description="Long-context data construction harness")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", allow_abbrev=False,
                       help="validate a spec, print the resolved config and its hash")
    c.add_argument("spec")
    c.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=_check)

    ls = sub.add_parser("ls", allow_abbrev=False, help="list registered methods and benchmarks")
    ls.set_defaults(func=_ls)

    sb = sub.add_parser("sandbox", allow_abbrev=False, help="the embedded sandbox world")
    sbs = sb.add_subparsers(dest="sandbox_command", required=True)
    b = sbs.add_parser("build", allow_abbrev=False,
                       help="build the sandbox (or find it built) and print where it is")
    b.add_argument("--spec", default=None, help="a spec whose 'sandbox' section to use")
    b.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--from-scratch", action="store_true",
                   help="re-run the whole recipe (corpus, tokenizer, pre-training) and re-check "
                        "the properties instead of using the shipped base model")
    b.add_argument("--out", default=None, help="where to build (default: runs/sandbox)")
    b.add_argument("--check-every", type=int, default=0, metavar="STEPS",
                   help="while pre-training from scratch, log the induction check every STEPS "
                        "steps (a multiple of 50; 0 = off)")
    b.set_defaults(func=_sandbox_build)
    co = sub.add_parser("construct", allow_abbrev=False,
                        help="build one stage dataset of one method and print its manifest")
    co.add_argument("spec")
    co.add_argument("--method", required=True, help="a method name or label from the spec")
    co.add_argument("--stage", type=int, default=0)
    co.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    co.set_defaults(func=_construct)

    cp = sub.add_parser("compare", allow_abbrev=False,
                        help="head-to-head comparison of the spec's methods, with report")
    cp.add_argument("spec")
    cp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    cp.set_defaults(func=_compare)

    st = sub.add_parser("study", allow_abbrev=False,
                        help="a comparison over several seeds, its report and the claims' "
                             "verdicts (runs/study/sandbox.yaml)")
    st.add_argument("study")
    st.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="run these seeds instead of study.seeds (e.g. a one-seed check)")
    st.add_argument("--report-only", action="store_true",
                    help="only regenerate the report from MLflow")
    st.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    st.set_defaults(func=_study)

    tu = sub.add_parser("tune", allow_abbrev=False,
                        help="Optuna study over the verification thresholds (resumable)")
    tu.add_argument("spec")
    tu.add_argument("--trials", type=int, default=None, help="override tune.trials")
    tu.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the study storage")
    tu.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    tu.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    tu.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    tu.set_defaults(func=_tune)

    sy = sub.add_parser("sync", allow_abbrev=False,
                        help="upload metrics spooled while the tracking server was away")
    sy.add_argument("--uri", default=None,
                    help="tracking store (default: MLFLOW_TRACKING_URI or runs/mlflow.db)")
    sy.set_defaults(func=_sync)

    rp = sub.add_parser("report", allow_abbrev=False,
                        help="rebuild a comparison report from MLflow alone")
    rp.add_argument("run_id")
    rp.add_argument("--spec", default=None, help="a spec whose tracking.uri to use")
    rp.add_argument("--out", default="runs/report")
    rp.set_defaults(func=_report)

    ev = sub.add_parser("eval", allow_abbrev=False,
                        help="evaluate a model on the spec's benchmarks at its lengths, log to "
                             "MLflow and print a table")
    ev.add_argument("spec")
    ev.add_argument("--model", required=True, help="a model folder (or a hub id, online)")
    ev.add_argument("--bench", nargs="+", default=None, metavar="NAME",
                    help="only these benchmarks (the spec's entry where it lists them)")
    ev.add_argument("--lengths", type=int, nargs="+", default=None, metavar="N",
                    help="override eval.lengths")
    ev.add_argument("--backend", choices=["vllm", "hf"], default=None,
                    help="override eval.backend")
    ev.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    ev.set_defaults(func=_eval)

    db = sub.add_parser("dashboard", allow_abbrev=False,
                        help="MLflow UI (and optuna-dashboard if installed) on 127.0.0.1")
    db.add_argument("--uri", default=None,
                    help="tracking store (default: MLFLOW_TRACKING_URI or runs/mlflow.db)")
    db.add_argument("--port", type=int, default=5000)
    db.add_argument("--optuna-storage", default="sqlite:///runs/optuna.db")
    db.add_argument("--optuna-port", type=int, default=8080)
    db.set_defaults(func=_dashboard)

    be = sub.add_parser("bench", allow_abbrev=False,
                        help="benchmarks: one JSON line per setting, then a table")
    be.add_argument("what", nargs="?", default="all",
                    choices=["all", "scoring", "verify", "index", "construct", "train", "eval",
                             "overhead", "scaling"])
    be.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    be.add_argument("--vocabs", type=int, nargs="+", default=[6144, 151936])
    be.add_argument("--device", default="cpu")
    be.add_argument("--plot", default=None, help="scaling: write the plot here (PNG)")
    be.add_argument("--stages", type=int, default=None,
                    help="overhead: the number of stages (default: the smoke spec's)")
    be.add_argument("--keep", default=None, metavar="DIR",
                    help="overhead: run in DIR and keep it (for policylong cost --validate)")
    be.add_argument("--screening", action="append", default=[], metavar="KEY=VALUE",
                    help="overhead: a screening setting to change, e.g. prefix_cache_mb=0")
    be.add_argument("--spec", default=None, metavar="SPEC",
                    help="overhead: this spec's world, budgets and recipe instead of the smoke "
                         "spec's (e.g. runs/study/sandbox.yaml; its study block is dropped)")
    be.set_defaults(func=_bench)

    cs = sub.add_parser("cost", allow_abbrev=False,
                        help="predicted compute and time per method, stage and phase")
    cs.add_argument("spec")
    cs.add_argument("--gpu-tflops", type=float, default=989.0,
                    help="a GPU's dense bf16 peak in TFLOP/s (default 989: H100 SXM); 0: none")
    cs.add_argument("--no-calibrate", action="store_true",
                    help="skip the short calibration run on this machine")
    cs.add_argument("--validate", action="store_true",
                    help="set predictions beside the measured times of the spec's built run")
    cs.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    cs.set_defaults(func=_cost)
    for parser in (p, *sub.choices.values(), *sbs.choices.values()):
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="show the INFO logs of vLLM, transformers, MLflow, FAISS and "
                                 "sentence-transformers (silenced otherwise)")
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.config import SpecError
    from harness.logs import configure

    args = build_parser().parse_args(argv)
    configure(getattr(args, "verbose", False))    # before any library that logs is imported
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:     # `policylong ls | head`: the reader has all it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:      # disk full, file size limit, permissions
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
