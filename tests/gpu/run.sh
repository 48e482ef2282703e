#!/usr/bin/env bash
# One-GPU check, a few minutes; never in CI. Assumes `scripts/setup.sh gpu` was run.
#   tests/gpu/run.sh [WORK_DIR]     (default: a temporary folder, removed at exit)
# 1. one bf16 training stage each at 8K and 32K tokens (32K extended from the 8K checkpoint)
#    of a random-init Qwen2 (hidden 512, 4 layers, vocab 32K) through harness.training,
#    flash_attention_2 if flash_attn imports, else sdpa; prints tokens/s and peak memory;
# 2. vLLM (CUDA) greedy generation from the 32K checkpoint at max_model_len 32768;
# 3. the cost model (policylong cost) calibrated on this GPU and checked against step 1's
#    measured training rates (within 20 %).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "no .venv here: run scripts/setup.sh gpu first" >&2
    exit 2
fi
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
WORK="${1:-}"
if [ -z "$WORK" ]; then
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS
"$PY" tests/gpu/gpu_check.py train "$WORK"
"$PY" tests/gpu/gpu_check.py generate "$(cat "$WORK/last_checkpoint")"
"$PY" tests/gpu/gpu_check.py cost "$WORK"
echo "gpu check ok in $((SECONDS - start)) s"
