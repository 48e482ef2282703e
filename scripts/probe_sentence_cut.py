"""Where a model puts the value after a probe query, by how the filler before the query ends.

For 40 test-split probe entities of a built sandbox: ``<filler> <First> <Last> keeps the <attr>``
with N tokens of filler before the query, the filler either cut at N tokens (probe version 1:
the query usually continues a cut sentence) or made of whole sentences (at most N tokens,
version 2). Prints, per model and N, the probability mass on the world's value lexicon at the
value's position and the mass on " was" (the filler's word after a subject). No profile is in
the input: this measures the slot, not the recall (``docs/sandbox.md``, "The probe's cut
sentence").

    python scripts/probe_sentence_cut.py --sandbox runs/sandbox/<key> MODEL_DIR [MODEL_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GAPS = (0, 30, 100, 200, 400, 900)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.probe import _filler_ids, _whole_sentences   # the probe's two fillers
    from harness.evaluation.loss_gap import probe_split
    from harness.sandbox import world as W

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sandbox", required=True, help="a built sandbox folder (probe.jsonl)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    probe = [json.loads(x) for x in (Path(a.sandbox) / "probe.jsonl").read_text().splitlines()]
    ents = probe_split(probe, "test")[:a.n]
    print("| model | filler | " + " | ".join(f"{g}" for g in GAPS) + " |")
    print("|---|---|" + "---|" * len(GAPS))
    for path in a.models:
        tok = AutoTokenizer.from_pretrained(path)
        values = sorted({tok(" " + v, add_special_tokens=False)["input_ids"][0]
                         for p in probe for _, v in p["facts"]})
        was = tok(" was", add_special_tokens=False)["input_ids"][0]
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for mode in ("cut", "whole sentences"):
            cells = []
            for gap in GAPS:
                rng = random.Random(gap)
                mv = mw = 0.0
                for p in ents:
                    attr, value = p["facts"][0]
                    q = tok(" " + W.fact(attr, p["first"], p["last"], value)[:-len(value) - 2],
                            add_special_tokens=False)["input_ids"]
                    fill = (_filler_ids(tok, rng, gap) if mode == "cut"
                            else _whole_sentences(tok, rng, gap))
                    with torch.no_grad():
                        logits = model(torch.tensor([fill + q])).logits[0, -1].float()
                    prob = torch.softmax(logits, -1)
                    mv += float(prob[values].sum())
                    mw += float(prob[was])
                cells.append(f"{mv / len(ents):.2f} / {mw / len(ents):.2f}")
            print(f"| {path} | {mode} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
