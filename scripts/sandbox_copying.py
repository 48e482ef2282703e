"""Does a sandbox model copy? The induction check and RULER's own answers, per digit.

    .venv/bin/python scripts/sandbox_copying.py --model M [--model M2 ...] [--samples 20]

For each model: ``harness.sandbox.properties.copying`` (random sequences of lexicon words and
of digits, each followed by itself: NLL of the first and of the second copy), then the NLL of
each token of the reference answer (``" 1234567."``) after RULER ``niah_single_1`` prompts at
512 tokens, built by the registered ``ruler`` benchmark (seed of its own). ln 10 = 2.30 nats is
what a uniform guess over the ten digits costs. Prints a table; ``--json F`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ASSET_MODEL = Path(__file__).resolve().parents[1] / "harness" / "assets" / "sandbox-model" / "model"


def answer_nll(model, tok, samples: int, seed: int, length: int = 512) -> list[float]:
    """Mean NLL of each token of RULER's reference answer, ``" "`` + seven digits + ``"."``."""
    import torch

    from harness.config import BenchmarkEntry
    from harness.construction.scoring import score_tokens
    from harness.evaluation.runner import load_benchmark

    bench = load_benchmark(BenchmarkEntry(name="ruler", tasks=["niah_single_1"],
                                          params={"seed": seed}))
    got = bench.samples("niah_single_1", length, tok, samples)
    rows = []
    for x in got:
        p = tok(x.prompt)["input_ids"]
        a = tok(" " + x.references[0] + ".", add_special_tokens=False)["input_ids"]
        rows.append(score_tokens(model, torch.tensor([p + a]))[1][0, len(p):])
    return [round(v, 3) for v in torch.stack(rows).mean(0).tolist()]

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", type=Path, default=None,
                   help="an HF folder (repeatable; default: the shipped sandbox model)")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from harness.sandbox import world as W
    from harness.sandbox.properties import copying
    from harness.training.model_io import load_model

    words = W.World(W.WorldSpec(seed=0)).lexicon()
    rows = {}
    for m in args.model or [ASSET_MODEL]:
        if not (m / "config.json").is_file():
            p.error(f"--model {m}: no config.json there (an HF model folder is expected)")
        tok = AutoTokenizer.from_pretrained(str(m))
        model = load_model(m).eval()
        rows[str(m)] = {"copying": copying(model, tok, words, n=args.samples, seed=args.seed),
                        "ruler_answer_nll": answer_nll(model, tok, args.samples, args.seed)}
    print(f"{'model':<50} {'words 1st/2nd':>14} {'digits 1st/2nd':>15}  "
          f"RULER answer NLL per token (ln 10 = {math.log(10):.2f})")
    for m, r in rows.items():
        c = r["copying"]
        print(f"{m[-50:]:<50} {c['words']['first']:>6.2f}/{c['words']['second']:<7.2f} "
              f"{c['digits']['first']:>6.2f}/{c['digits']['second']:<8.2f} "
              + " ".join(f"{v:.2f}" for v in r["ruler_answer_nll"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
