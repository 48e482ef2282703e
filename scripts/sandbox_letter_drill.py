"""The multiple-choice set's second hop alone: can the sandbox model learn to name the letter
of a choice from its value?

    .venv/bin/python scripts/sandbox_letter_drill.py --out /tmp/drill [--steps 1500]
        [--lr 1e-3] [--model harness/assets/sandbox-model/model] [--eval-every 250] [-n 400]
        [--grow-to LAYERS [--freeze-original]] [--copy-every K]
        [--form alone|in-place|in-place-no-format|in-place-value-only|in-place-value-prefixed|
                in-place-value-after-format|in-place-open-spaced]

Each drill is LongBench-v2's choice block with four values of the world's facts (values of
entities that are not the probe's, ``harness.sandbox.build.format_entities``), then one of the
values and the official answer line, the letter to be predicted::

    Choices:
    (A) chevar
    (B) moshath
    (C) dravin
    (D) sword

    moshath. The correct answer is (B

Drills are packed whole into rows of the base context (each with its own positions, so no
drill sees another) and only the letter carries loss. The value stands at a fixed distance
before the answer, so the drill is the second hop without the first (finding the value in the
context): the response form of ``PretrainRecipe.format_mc_answer`` ``value``. A fresh AdamW and
cosine schedule (20 warm-up steps, to 10 %) from the given weights; every ``--eval-every``
steps it prints the training loss (ln 4 = 1.386 is chance) and the accuracy on ``n`` held-out
drills (their own seed), per true letter, with the letters predicted. The model is saved to
``--out``; the shipped asset is never touched.

``--form in-place`` trains and measures the in-place drill instead (``harness.sandbox.build.
mc_drills``, what ``PretrainRecipe.format_drill_share`` mixes into phase 3): the benchmark's
one-pass prompt from its question on, the planted fact as the ``fact`` form states it, and the
answer line up to ``(``, about 150 tokens against the drill's 46, the choices farther from the
letter and the format line between; packed whole, the loss on the letter alone. Training drills
come from seed ``harness.sandbox.build.DRILL_STAGE_SEED``, the held-out ones from
``scripts/sandbox_mc_cot.py``'s ``DRILL_SEED``, which no recipe trains on. ``--form
in-place-no-format`` is the same without LongBench-v2's format line (``Format your response as
follows: "The correct answer is (insert answer here)".``), in training and in measurement: the
one difference from ``in-place`` whose effect it isolates. ``--form in-place-value-only`` also
drops the restated name and attribute before the value (``... (D) trugaix\n\nsonain. The
correct answer is (``), and with it the one-pass prompt's own answer prefix (the ``The correct
answer is`` the response follows): the drill alone with the question line before its choices.
``--form in-place-value-prefixed`` puts that prefix back (``... (D) trugaix\n\nThe correct
answer is sonain. The correct answer is (``: the ``value`` form's response after the one-pass
prompt, less its format line), the one difference from ``in-place-value-only``. ``--form
in-place-value-after-format`` keeps the format line and drops the prefix (``... (D) trugaix\n\n
Format your response as follows: "The correct answer is (insert answer here)".\n\nsonain. The
correct answer is (``: a response after a prompt that ends at LongBench-v2's own format line),
the one difference from ``in-place-value-only``. ``--form in-place-open-spaced`` is that with a
space before the value (``...".\n\n sonain. The correct answer is (``), the drill that phase 3
mixes in with ``format_mc_prompt: open-spaced`` (``mc_drills``): the value is then the one token
it is among the choices, where after the blank line alone it splits into pieces.

``--copy-every K`` (an in-place form) puts a batch of phase 1's slice copying (``copy_rows``) at
every K-th step instead of drills, so that the copying is trained beside them
(``harness.sandbox.build.drill_stage_data``, a ``{"drill": FORM, "copy_every": K}`` stage).

``--grow-to LAYERS`` deepens the model first by block expansion (``harness.training.model_io.
expand_blocks``: identity blocks inserted, so the drills start from what the given weights
compute), the one difference from the same drill on the given depth; with
``--freeze-original`` only the inserted blocks train (embeddings, norms, head and the given
blocks frozen), as LLaMA Pro (arXiv:2401.02415) adds a skill without retraining the model.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import time
from pathlib import Path

ASSET_MODEL = Path(__file__).resolve().parents[1] / "harness" / "assets" / "sandbox-model" / "model"
LETTERS = "ABCD"
FORMS = ("alone", "in-place", "in-place-no-format", "in-place-value-only",
         "in-place-value-prefixed", "in-place-value-after-format", "in-place-open-spaced")
HELD_OUT_SEED = 9000   # scripts/sandbox_mc_cot.py's DRILL_SEED: the held-out in-place drills


def drill(rng: random.Random, values: list[str]) -> tuple[str, str]:
    """(prompt, letter): the choice block, a blank line, the value and the answer line."""
    from benchmarks.longbench_v2 import COMPLETION_ANSWER_PREFIX

    choices, k = rng.sample(values, 4), rng.randrange(4)
    block = "Choices:\n" + "".join(f"({c}) {v}\n" for c, v in zip(LETTERS, choices))
    return f"{block}\n{choices[k]}. {COMPLETION_ANSWER_PREFIX} (", LETTERS[k]


def drill_rows(tokenizer, values: list[str], n_rows: int, context: int, seed: int):
    import numpy as np

    rng = random.Random(seed)
    ids = np.full((n_rows, context), tokenizer.eos_token_id, dtype=np.int64)
    pos, pad = np.zeros_like(ids), np.ones((n_rows, context), dtype=bool)
    for row in range(n_rows):
        fill = 0
        while True:
            prompt, letter = drill(rng, values)
            toks = tokenizer(prompt)["input_ids"] + tokenizer(
                letter, add_special_tokens=False)["input_ids"]
            if fill + len(toks) > context:
                break
            ids[row, fill:fill + len(toks)] = toks
            pos[row, fill:fill + len(toks)] = np.arange(len(toks))
            pad[row, fill + len(toks) - 2:fill + len(toks)] = False   # last prompt token -> letter
            fill += len(toks)
    return ids, pos, pad


def accuracy(model, tokenizer, values: list[str], n: int, seed: int) -> dict:
    """Greedy choice among the four letter tokens on ``n`` held-out drills."""
    rng = random.Random(seed)
    return letter_accuracy(model, tokenizer, [drill(rng, values) for _ in range(n)])


def letter_accuracy(model, tokenizer, drills: list[tuple[str, str]]) -> dict:
    """Greedy choice among the four letter tokens after each prompt of ``drills`` (prompt,
    answer), the answer's first character being the true letter (``B`` or ``B).``)."""
    import torch

    letter_ids = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in LETTERS]
    hits, total, said = collections.Counter(), collections.Counter(), collections.Counter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for prompt, answer in drills:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            got = LETTERS[int(model(input_ids=ids).logits[0, -1, letter_ids].argmax())]
            total[answer[0]] += 1
            hits[answer[0]] += got == answer[0]
            said[got] += 1
    model.train(was_training)
    return {"accuracy": round(sum(hits.values()) / len(drills), 3),
            "by_letter": {c: f"{hits[c]}/{total[c]}" for c in LETTERS},
            "predicted": dict(sorted(said.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", type=Path, default=ASSET_MODEL)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("-n", type=int, default=400, help="held-out drills per evaluation")
    p.add_argument("--seed", type=int, default=0, help="the sandbox world's seed")
    p.add_argument("--grow-to", type=int, default=None, metavar="LAYERS",
                   help="deepen the model to this many blocks first (block expansion)")
    p.add_argument("--freeze-original", action="store_true",
                   help="with --grow-to: train the inserted blocks only, as LLaMA Pro does")
    p.add_argument("--copy-every", type=int, default=0, metavar="K",
                   help="an in-place form: a batch of phase 1's slice copying at every K-th "
                        "step instead of drills (harness.sandbox.build.drill_stage_data)")
    p.add_argument("--form", choices=FORMS, default="alone",
                   help="the drill alone (default), the in-place drill of phase 3's mix, that "
                        "drill without the format line, or also without the restated fact "
                        "(and the prompt's answer prefix), or that with the prefix or with the "
                        "format line")
    args = p.parse_args(argv)
    if args.out.resolve() == args.model.resolve() or ASSET_MODEL.parent in args.out.resolve(
            ).parents:
        p.error("--out must be a new folder outside the shipped asset")
    if args.copy_every and (args.form == "alone" or args.copy_every < 2):
        p.error("--copy-every needs an in-place --form and is 2 or more (a batch of slice "
                "copying at every K-th step)")
    if args.freeze_original and not args.grow_to:
        p.error("--freeze-original needs --grow-to (it trains the inserted blocks only)")
    if args.steps < 1 or args.n < 1 or args.eval_every < 1 or args.eval_every % 25:
        p.error("--steps and -n must be positive, --eval-every a positive multiple of 25 "
                "(the training loop logs every 25 steps)")

    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from harness.config import SandboxSpec
    from harness.sandbox.build import DRILL_STAGE_WARMUP, RECIPE, format_entities
    from harness.training.loop import LoopSettings, RowSource, train_loop
    from harness.training.model_io import (expand_blocks, expanded_block_indices,
                                           freeze_all_but_blocks, load_model, save_checkpoint)

    tok = AutoTokenizer.from_pretrained(str(args.model))
    model = load_model(args.model)
    trainable = None
    if args.grow_to:
        n_blocks = len(model.model.layers)
        try:
            model = expand_blocks(model, args.grow_to)
        except ValueError as exc:
            p.error(f"--grow-to {args.grow_to}: {exc}")
        if args.freeze_original:
            trainable = freeze_all_but_blocks(
                model, expanded_block_indices(n_blocks, args.grow_to))
            print(f"training the {args.grow_to - n_blocks} inserted blocks only: "
                  f"{trainable:,} parameters", flush=True)
    n_rows = args.steps * RECIPE.micro_batch
    if args.form == "alone":
        values = sorted({v for e in format_entities(SandboxSpec(seed=args.seed), 300, 7)
                         for _, v in e["facts"]})
        ids, pos, pad = drill_rows(tok, values, n_rows, RECIPE.context, seed=1)

        def measure() -> dict:
            return accuracy(model, tok, values, args.n, seed=2)
    else:
        import tempfile

        from harness.sandbox.build import drill_forms, drill_stage_data

        with tempfile.TemporaryDirectory() as tmp:
            ids, pos, pad = drill_stage_data(SandboxSpec(seed=args.seed), tok, args.form,
                                             args.steps, Path(tmp), RECIPE, args.copy_every)
            held_out = drill_forms(SandboxSpec(seed=args.seed), tok, args.n,
                                   HELD_OUT_SEED, Path(tmp), args.form)

        def measure() -> dict:
            return letter_accuracy(model, tok, held_out)
    history = [{"step": 0, **measure()}]
    print(json.dumps(history[-1]), flush=True)
    losses: list[float] = []

    def log(metrics: dict, step: int) -> None:
        if "train/loss" in metrics:
            losses.append(metrics["train/loss"])
        if step % args.eval_every == 0 or step == args.steps:
            history.append({"step": step, "loss": round(sum(losses) / max(len(losses), 1), 3),
                            **measure()})
            losses.clear()
            print(json.dumps(history[-1]), flush=True)

    settings = LoopSettings(steps=args.steps, micro_batch=RECIPE.micro_batch, grad_accum=1,
                            lr=args.lr, warmup_steps=DRILL_STAGE_WARMUP,
                            min_lr_ratio=RECIPE.min_lr_ratio,
                            log_every=25, seed=args.seed)
    t0 = time.perf_counter()
    train_loop(model, RowSource(ids, pos, pad), settings, Accelerator(cpu=True), log=log)
    seconds = time.perf_counter() - t0
    record = {"from": str(args.model), "grow_to": args.grow_to, "form": args.form,
              "copy_every": args.copy_every,
              "freeze_original": args.freeze_original, "trainable_parameters": trainable,
              "steps": args.steps, "lr": args.lr,
              "seconds": round(seconds, 1), "history": history}
    save_checkpoint(model, tok, args.out, files={"letter_drill.json": json.dumps(record, indent=2)})
    print(f"{args.steps} drill steps in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
