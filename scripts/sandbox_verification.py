"""How verification treats the sandbox's candidate kinds (the table in docs/sandbox.md).

    .venv/bin/python scripts/sandbox_verification.py [--model DIR] [--sandbox DIR] [-n 100]

For the references of the first ``n`` probe entities, anchors are screened with the model
(α = 2.0, 8 anchors at most, none among the first 16 tokens) and four candidate contexts are
verified: the true profile, the look-alike's profile, another probe entity's profile and
filler. Printed per kind: the share with ΔI > 0.4 and with ΔI ≤ 0 for the entropy and NLL
gains, each as max and as mean over the anchors.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from transformers import AutoTokenizer

    from harness.sandbox import world as W
    from harness.sandbox.build import ASSET, build_sandbox
    from harness.screening import screen_roots, verify
    from harness.training.model_io import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ASSET / "model"))
    ap.add_argument("--sandbox", default=None, help="a built sandbox (default: build/find it)")
    ap.add_argument("-n", type=int, default=100)
    args = ap.parse_args()
    sandbox = Path(args.sandbox) if args.sandbox else build_sandbox()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model).eval()
    probe = [json.loads(x) for x in (sandbox / "probe.jsonl").open()][:args.n]
    roots, cands = [], []
    for i, p in enumerate(probe):
        rng = random.Random(p["reference_seed"])
        e = W.Entity(p["first"], p["last"], tuple(tuple(f) for f in p["facts"]))
        text, _ = W.reference_text(rng, e, n_before=rng.randint(2, 8))
        roots.append(np.array(tok(text)["input_ids"]))
        other = probe[(i + 1) % len(probe)]
        cands.append([np.array(tok(t)["input_ids"]) for t in
                      (p["profile"], p["lookalike_profile"], other["profile"],
                       W.filler(rng, 10))])
    screened = screen_roots(model, roots, 512, 2.0, 8, tok.eos_token_id, skip_start=16)
    kinds = ["true profile", "look-alike", "other profile", "filler"]
    gains = {k: {g: [] for g in ("H max", "H mean", "NLL max", "NLL mean")} for k in kinds}
    for s, cs in zip(screened, cands):
        for kind, v in zip(kinds, verify(model, s, cs, 1024, tok.eos_token_id)):
            if v.dI_entropy.size:
                for g, x in (("H max", v.max_entropy), ("H mean", v.mean_entropy),
                             ("NLL max", v.max_nll), ("NLL mean", v.mean_nll)):
                    gains[kind][g].append(x)
    print(f"anchors per root: {np.mean([len(s.anchors) for s in screened]):.2f}")
    print("share with ΔI > 0.4 / ΔI <= 0")
    print(f"{'candidate':<14}" + "".join(f"{g:>16}" for g in gains[kinds[0]]))
    for kind in kinds:
        cells = [f"{np.mean(np.array(v) > 0.4):.2f} / {np.mean(np.array(v) <= 0):.2f}"
                 for v in gains[kind].values()]
        print(f"{kind:<14}" + "".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
