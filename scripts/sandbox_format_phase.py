"""Run the sandbox recipe's optional phase 3 (benchmark formats) or phase 4 (multiple choice
with LongBench-v2's CoT) on a base model and save the result into another folder; the shipped
asset is never touched.

    .venv/bin/python scripts/sandbox_format_phase.py --out /tmp/sandbox-format [--steps 600]
        [--phase 3|4] [--model harness/assets/sandbox-model/model] [--max-positions 4096]
        [--set format_lr=5e-4 --set format_retain_every=2 --set cot_mc_share=0.5 ...]

``--steps`` sets ``PretrainRecipe.format_steps`` (phase 4: ``cot_steps``), ``--set`` any other
``format_*`` or ``cot_*`` field, or ``copy_share`` / ``copy_digit_share`` (the slice copying
in the batches of phase 2's mix that every ``format_retain_every``-th step trains on) (a YAML
value; the rest keep their defaults); ``--max-positions`` writes a larger
``max_position_embeddings`` into the saved config (RoPE unchanged: extrapolation), so that
``policylong eval`` may run it past 512.
Prints the wall time of building the rows and of training.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

ASSET_MODEL = Path(__file__).resolve().parents[1] / "harness" / "assets" / "sandbox-model" / "model"


def recipe_changes(items: list[str]) -> dict:
    """The recipe fields that ``--set FIELD=VALUE`` items change, each value of its field's
    type (``harness.sandbox.build.set_items``); ValueError names the item that sets the
    phase's length (that is ``--steps``), or is not a ``format_*``, ``cot_*``, ``copy_share``
    or ``copy_digit_share`` field or not of its type."""
    from harness.sandbox.build import set_items

    why = "the phase's length is --steps"
    return set_items(items, refuse={"format_steps": why, "cot_steps": why})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", type=Path, default=ASSET_MODEL)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="the sandbox world's seed")
    p.add_argument("--phase", type=int, choices=(3, 4), default=3)
    p.add_argument("--max-positions", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a format_* or cot_* field of the recipe, or copy_share / "
                        "copy_digit_share (YAML value)")
    args = p.parse_args(argv)
    if args.out.resolve() == args.model.resolve() or ASSET_MODEL.parent in args.out.resolve(
            ).parents:
        p.error("--out must be a new folder outside the shipped asset")

    from transformers import AutoTokenizer

    from harness.config import SandboxSpec
    from harness.sandbox.build import RECIPE, format_pretraining
    from harness.training.model_io import load_model, save_checkpoint

    try:
        changes = recipe_changes(args.set)
    except ValueError as exc:
        p.error(str(exc))
    changes["format_steps" if args.phase == 3 else "cot_steps"] = args.steps
    recipe = dataclasses.replace(RECIPE, **changes)
    tok = AutoTokenizer.from_pretrained(str(args.model))
    model = load_model(args.model)
    t0 = time.perf_counter()
    format_pretraining(SandboxSpec(seed=args.seed), model, tok, recipe, phase=args.phase)
    seconds = time.perf_counter() - t0
    if args.max_positions:
        model.config.max_position_embeddings = args.max_positions
    record = {"from": str(args.model), "recipe": dataclasses.asdict(recipe),
              "seconds": round(seconds, 1)}
    save_checkpoint(model, tok, args.out, files={"format_phase.json": json.dumps(record, indent=2)})
    print(f"phase {args.phase}: {args.steps} steps in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
