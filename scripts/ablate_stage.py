"""Ablation of the collapse of the probe-set loss gap (docs/sandbox.md): one stage of training
from the sandbox base model (the smoke recipe's stage 0: 8 optimizer steps of 16K tokens,
warm-up and cosine over 2 stages), changing one thing at a time; then the probe-set loss gap
and the probe gain at 512, 1024 and 2048 (100 test-split probe items per length).

    .venv/bin/python scripts/ablate_stage.py OUT.jsonl NAME=DATASET_DIR:LR:THETA ...

DATASET_DIR is a stage dataset of the smoke spec (runs/out/smoke/<method>/<key>/stage-0/dataset);
each run appends one JSON line to OUT.jsonl and keeps its checkpoint under OUT/<NAME>/.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(out: Path, runs: list[str]) -> None:
    from transformers import AutoTokenizer

    from benchmarks.probe import run_probe
    from harness.config import load_spec
    from harness.evaluation.loss_gap import loss_gap, probe_set
    from harness.experiments.wiring import resolve_inputs
    from harness.training.model_io import load_eval_model
    from harness.training.stage import train_stage

    spec = load_spec("runs/smoke.yaml")
    base, _ = resolve_inputs(spec)
    tok = AutoTokenizer.from_pretrained(str(base))
    triples, probe = probe_set(spec, tok)
    for arg in runs:
        name, _, rest = arg.partition("=")
        dataset, lr, theta = rest.split(":")
        t0 = time.perf_counter()
        train = spec.train.model_copy(update={"lr": float(lr)})
        ext = spec.context_extension.model_copy(update={"rope_theta": float(theta)})
        ckpt = train_stage(base, dataset, train, out.with_suffix("") / name / "checkpoint",
                           extension=ext, stage=0, stages=spec.stages.count, progress=False)
        model = load_eval_model(ckpt)
        r = run_probe(model, tok, probe, [512, 1024, 2048], n=100, seed=spec.seed)
        rec = {"name": name, "dataset": dataset, "lr": float(lr), "rope_theta": float(theta),
               "loss_gap_probe": round(loss_gap(model, triples)["loss_gap"], 3),
               "probe_gain": {L: round(v["gain"], 3) for L, v in r.items()},
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(rec), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
