"""The sandbox's multiple-choice set, one pass and LongBench-v2's two-pass CoT, pass by pass.

    .venv/bin/python scripts/sandbox_mc_cot.py MODEL [MODEL ...] --sandbox runs/sandbox/<key>
        [--lengths 512 1024] [-n 40]

For each model and length, on the first ``n`` test-split items (``--split validation``: the
validation split's; ``harness.sandbox.world.mc_items``, built by the registered
``longbench_v2`` benchmark, completion form, greedy through transformers):

- ``one pass``: the accuracy of the 0-shot prompt (what the main job runs), how many of its
  responses name the true value before the answer line (``value first``: the response form of
  ``PretrainRecipe.format_mc_answer`` ``value``/``fact``), and its letters, counted;
- ``named a choice``/``its letter``: how many one-pass responses name one of the four choices'
  values before the answer line, and how many of those then give that value's letter (the
  second hop in place, right or wrong value); ``asked``: how many responses in the ``fact``
  form start with the name and attribute the question asks (``<First> <Last> keeps the
  <attr>``, copied from the question); ``value given the ask``: how many times the true value
  is the first word written after the one-pass prompt followed by that start (the first hop
  alone, greedy, 4 new tokens); ``letter given the fact``: how many times the true letter is
  the token written after the one-pass prompt followed by the true fact and the answer line
  up to ``(`` (the second hop in place, the document in the prompt; ``--form value``: the
  true value alone in place of the fact, as the ``value`` form's response states it);
- ``CoT``: the accuracy of the two passes (``cot: true, cot_tokens: 32``);
- ``fact``: how many first passes wrote the planted fact exactly (``<First> <Last> keeps the
  <attr> <value>.``, the sandbox's own wording, which the recipe's optional phase 4 teaches);
- ``gold``: the answer pass's accuracy when its CoT is that fact, i.e. the second hop alone
  (from the value to its letter);
- the answers' letters, counted (one letter for every item is chance).

``--prompt open``: the one-pass prompt without the completion form's answer prefix
(``longbench_v2`` ``params.prompt: open``, ``PretrainRecipe.format_mc_prompt``), for a model
trained so; the statements given in place then start the response (no leading space);
``--prompt open-spaced``: the same prompt, the statements given after a space (the
``open-spaced`` recipe form).

``--drills N``: besides, the letter accuracy on ``N`` held-out in-place letter drills
(``harness.sandbox.build.mc_drills``, seed ``DRILL_SEED``, which no recipe trains on; the
document left out; ``--form value``: the drills state the value alone), with the letters
predicted.

Lengths past 512 need a model folder with ``max_position_embeddings`` raised
(``scripts/sandbox_format_phase.py --max-positions 4096``). Chance is 25 %.
"""
from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path


def _bench(sandbox: Path, **params):
    from harness.config import BenchmarkEntry
    from harness.registry import resolve

    return resolve("benchmark", "longbench_v2")(BenchmarkEntry(
        name="longbench_v2", params={"sandbox_dir": str(sandbox), **params}))


def _letters(responses, prefix: str) -> dict:
    """The extracted letters (``None``: no answer line), read after the prompt's answer
    ``prefix`` as the benchmark scores them."""
    from benchmarks.longbench_v2 import extract_answer

    return dict(collections.Counter(
        str(extract_answer(prefix + r)) for r in responses).most_common())


def _fact(item: dict) -> tuple[str, str]:
    """The planted fact the question (``Which <attr> does <First> <Last> keep?``) asks, in the
    world's wording (``world.fact``), and its start without the value (``<First> <Last> keeps
    the <attr>``)."""
    from harness.sandbox.world import fact

    attr, name = item["question"].removeprefix("Which ").removesuffix(" keep?").split(" does ")
    value = item["choice_" + item["answer"]]
    said = fact(attr, *name.split(" ", 1), value)
    return said, said.removesuffix(f" {value}.")


DRILL_SEED = 9000   # held-out drills: format_seed_offset of the recipe and its trials is below


def _letter_prompt(prompt: str, item: dict, form: str = "fact", space: str = " ") -> str:
    """The one-pass prompt, ``space`` (what stands before the response's first word:
    ``harness.sandbox.build.mc_response_space``), the true fact as the ``fact`` form states it
    (``form`` ``value``: the true value alone, as the ``value`` form does) and the answer line
    up to the letter."""
    from benchmarks.longbench_v2 import COMPLETION_ANSWER_PREFIX

    told = _fact(item)[0] if form == "fact" else item["choice_" + item["answer"]] + "."
    return f"{prompt}{space}{told} {COMPLETION_ANSWER_PREFIX} ("


def _next_letters(backend, tok, prompts: list[str]) -> list[str]:
    """The greedy next token after each prompt (with BOS, as the one-pass prompt is sent)."""
    out = backend.generate([tok(p)["input_ids"] for p in prompts], [1] * len(prompts))
    return [tok.decode(o, skip_special_tokens=True).strip() for o in out]


def load(model_dir: Path):
    """The model's tokenizer and a greedy float32 transformers backend."""
    from transformers import AutoTokenizer

    from harness.evaluation.backends import HFGreedy

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok, HFGreedy(model_dir, [tok.eos_token_id], dtype="float32")


def held_out_drills(tok, backend, n: int, form: str = "fact", prompt: str = "completion"
                    ) -> dict:
    """The letter accuracy on ``n`` in-place letter drills no recipe trains on, stating the
    fact or (``form`` ``value``) the value alone, after the ``prompt`` form's prompt."""
    import tempfile

    from harness.config import SandboxSpec
    from harness.sandbox.build import mc_drills

    with tempfile.TemporaryDirectory() as tmp:
        drills = mc_drills(SandboxSpec(), tok, n, DRILL_SEED, Path(tmp), form, prompt)
    said = _next_letters(backend, tok, [p for p, _ in drills])
    return {"n": len(drills), "right": sum(s == a[0] for s, (_, a) in zip(said, drills)),
            "letters": dict(collections.Counter(said).most_common())}


def _second_hop(samples, responses, prefix: str) -> dict:
    """Of the one-pass responses: how many state the true value before the answer line
    (``value_first``), how many start with the question's name and attribute, how many name one
    of the choices' values, and how many of those give that value's letter (read after the
    prompt's answer ``prefix``)."""
    from benchmarks.longbench_v2 import extract_answer

    true = asked = named = agree = 0
    for x, r in zip(samples, responses):
        item = x.meta["item"]
        stated = r.split(".")[0].strip()
        asked += stated.startswith(_fact(item)[1] + " ")
        last = stated.split(" ")[-1:]
        true += last == [item["choice_" + item["answer"]]]
        choice = [c for c in "ABCD" if last == [item["choice_" + c]]]
        if choice:
            named += 1
            agree += extract_answer(prefix + r) == choice[0]
    return {"value_first": true, "asked": asked, "named": named, "agree": agree}


def measure(tok, backend, sandbox: Path, lengths: list[int], n: int, cot_too: bool = True,
            form: str = "fact", prompt: str = "completion", split: str = "test") -> list[dict]:
    def run(samples):
        ids = [tok(x.prompt, add_special_tokens=x.add_special_tokens)["input_ids"]
               for x in samples]
        out = backend.generate(ids, [x.max_new_tokens for x in samples])
        return [tok.decode(o, skip_special_tokens=True) for o in out]

    from harness.sandbox.build import mc_bench_prompt, mc_response_space

    one = _bench(sandbox, prompt=mc_bench_prompt(prompt), sandbox_split=split)
    cot = _bench(sandbox, cot=True, cot_tokens=32, sandbox_split=split)
    space = mc_response_space(one, prompt)   # what stands before a response's first word
    rows = []
    for length in lengths:
        first = one.samples("overall", length, tok, n)
        said = run(first)
        plain = one.score("overall", first, said).value
        # the first hop alone: the value greedily written after the prompt and the asked fact
        given = backend.generate([tok(x.prompt + space + _fact(x.meta["item"])[1],
                                      add_special_tokens=x.add_special_tokens)["input_ids"]
                                  for x in first], [4] * len(first))
        row = {**_second_hop(first, said, one.answer_prefix), "length": length, "n": len(first),
               "one_pass": plain, "one_letters": _letters(said, one.answer_prefix), "given": sum(
                   tok.decode(o, skip_special_tokens=True).strip().split(" ")[0].rstrip(".")
                   == x.meta["item"]["choice_" + x.meta["item"]["answer"]]
                   for o, x in zip(given, first)),
               "letter": sum(got == x.references[0] for got, x in zip(_next_letters(
                   backend, tok, [_letter_prompt(x.prompt, x.meta["item"], form, space)
                                       for x in first]),
                   first)),
               "example_one": said[0].strip()[:80]}
        if not cot_too:
            rows.append(row)
            continue
        got = cot.samples("overall", length, tok, n)
        cots = run(got)
        answers = run(cot.followup("overall", got, cots, tok))
        facts = [_fact(x.meta["item"])[0] for x in got]
        gold = run(cot.followup("overall", got, [" " + f for f in facts], tok))
        rows.append({
            **row, "cot": cot.score("overall", got, answers).value,
            "fact": sum(c.strip() == f for c, f in zip(cots, facts)),
            "gold": cot.score("overall", got, gold).value,
            "letters": dict(collections.Counter(a.strip()[:3] for a in answers).most_common()),
            "example_cot": cots[0].strip()[:80]})
    return rows


def main(argv: list[str] | None = None) -> int:
    from harness.sandbox.build import MC_PROMPTS

    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--sandbox", required=True, type=Path,
                   help="a built sandbox folder (policylong sandbox build prints it)")
    p.add_argument("--lengths", nargs="+", type=int, default=[512])
    p.add_argument("-n", type=int, default=40)
    p.add_argument("--one-pass", action="store_true", help="the one-pass prompt only")
    p.add_argument("--drills", type=int, default=0, metavar="N",
                   help="also the letter accuracy on N held-out in-place letter drills")
    p.add_argument("--form", choices=("fact", "value"), default="fact",
                   help="what is stated before the answer line in 'letter given the fact' and "
                        "the drills (the one-pass response form of the model measured)")
    p.add_argument("--prompt", choices=MC_PROMPTS, default="completion",
                   help="the one-pass prompt: with the completion form's answer prefix "
                        "(default) or without it (longbench_v2 params.prompt: open); "
                        "open-spaced: without it, the response starting with a space "
                        "(PretrainRecipe.format_mc_prompt)")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="the probe entities the items ask about: test (what a comparison and "
                        "policylong eval score) or validation (what tuning scores; for choosing "
                        "among trial models without looking at the test items)")
    args = p.parse_args(argv)
    if args.drills < 0:
        p.error(f"--drills must be 0 or more, got {args.drills}")
    if not (args.sandbox / "probe.jsonl").is_file():
        p.error(f"--sandbox {args.sandbox}: no probe.jsonl there (policylong sandbox build)")
    # the sandbox's items, not a LongBench-v2 file that may lie in ../shared
    os.environ["POLICYLONG_SHARED_DATA"] = str(args.sandbox / "no-shared-data")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("| model | length | n | one pass | value first | asked | named a choice / its letter "
          "| value given the ask | letter given the fact | one-pass answers | CoT | fact written "
          "| gold-CoT answer pass | CoT answers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    drilled = []
    for m in args.models:
        tok, backend = load(m)
        for r in measure(tok, backend, args.sandbox, args.lengths, args.n, not args.one_pass,
                         args.form, args.prompt, args.split):
            one = ", ".join(f"`{k}` {v}" for k, v in r["one_letters"].items())
            head = (f"| {m} | {r['length']} | {r['n']} | {r['one_pass']:.1f} | "
                    f"{r['value_first']} / {r['n']} | {r['asked']} | {r['named']} / "
                    f"{r['agree']} | {r['given']} / {r['n']} | {r['letter']} / {r['n']} | {one} |")
            if "cot" not in r:
                print(head + " - | - | - | - |")
                print(f"|  |  |  | first response: `{r['example_one']}` |" + "  |" * 10)
                continue
            letters = ", ".join(f"`{k}` {v}" for k, v in r["letters"].items())
            print(f"{head} {r['cot']:.1f} | {r['fact']} / {r['n']} | {r['gold']:.1f} | {letters} |")
            print(f"|  |  |  | first response: `{r['example_one']}` |" + "  |" * 6
                  + f" first CoT: `{r['example_cot']}` |  |  |  |")
        if args.drills:
            d = held_out_drills(tok, backend, args.drills, args.form, args.prompt)
            drilled.append(f"- {m}: {d['right']} / {d['n']} held-out in-place letter drills "
                           f"(seed {DRILL_SEED}, {args.form} form); letters: " + ", ".join(
                               f"`{k}` {v}" for k, v in d["letters"].items()))
    if drilled:
        print()
        print("\n".join(drilled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
