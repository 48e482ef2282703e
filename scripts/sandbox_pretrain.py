"""Pre-train a variant of the sandbox base model from scratch (the whole recipe: tokenizer,
phases 1-3 and any stages) into a folder of its own; the shipped asset is never touched.

    .venv/bin/python scripts/sandbox_pretrain.py --out /tmp/sandbox-deep --set layers=4
        [--set format_steps=2000 --set format_mc_answer=fact ...] [--seed 0]
        [--check-every 250] [--max-positions 4096]

``--set`` changes any field of ``PretrainRecipe`` but ``version`` and ``stages`` (a YAML
value of the field's type; the rest keep version 4's values), checked with the model's shape
before the tokenizer is trained. The folder holds the model (``model/``) and
``pretrain.json`` (the recipe, the changes, the wall time), written only when the run is
complete. The build keeps its progress in ``<out>.state`` (each phase's training state every
``SAVE_EVERY`` steps, each finished phase's weights): the same command after a kill goes on
where it stopped; another recipe is refused there until that folder is removed.
``--max-positions`` writes a larger ``max_position_embeddings`` into the saved config (RoPE
unchanged: extrapolation), so that ``policylong eval`` may run it past 512.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

ASSET = Path(__file__).resolve().parents[1] / "harness" / "assets" / "sandbox-model"


def recipe_changes(items: list[str]):
    """(recipe, changes): version 4's recipe with the ``--set FIELD=VALUE`` items, each value
    of its field's type (``harness.sandbox.build.set_items``, any field); ValueError names
    the item that is not a field or not of its type, and a shape no model can have."""
    from harness.sandbox.build import RECIPE, check_shape, check_stages, set_items

    changes = set_items(items, any_field=True)
    recipe = dataclasses.replace(RECIPE, **changes)
    check_shape(recipe)
    check_stages(recipe)
    return recipe, changes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0, help="the sandbox world's seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a field of the recipe (YAML value)")
    p.add_argument("--check-every", type=int, default=0, metavar="STEPS",
                   help="log the induction check every STEPS steps (a multiple of 50)")
    p.add_argument("--max-positions", type=int, default=None)
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"--out {args.out} exists; pick a new folder")
    if ASSET in args.out.resolve().parents or args.out.resolve() == ASSET:
        p.error("--out must be outside the shipped asset")
    if args.check_every % 50:
        p.error(f"--check-every must be a multiple of 50, got {args.check_every}")
    try:
        recipe, changes = recipe_changes(args.set)
    except ValueError as exc:
        p.error(str(exc))

    from harness.config import SandboxSpec
    from harness.fileio import atomic_dir
    from harness.sandbox.build import pretrain

    t0 = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        pretrain(SandboxSpec(seed=args.seed), tmp / "model", recipe,
                 check_every=args.check_every,
                 state_dir=args.out.with_name(args.out.name + ".state"))
        seconds = time.perf_counter() - t0
        if args.max_positions:
            cfg = tmp / "model" / "config.json"
            c = json.loads(cfg.read_text())
            c["max_position_embeddings"] = args.max_positions
            cfg.write_text(json.dumps(c, indent=2))
        (tmp / "pretrain.json").write_text(json.dumps(
            {"seed": args.seed, "changes": changes, "recipe": dataclasses.asdict(recipe),
             "seconds": round(seconds, 1)}, indent=2))
    print(f"pre-trained in {seconds:.0f} s -> {args.out / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
