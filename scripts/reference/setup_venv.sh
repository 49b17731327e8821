#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with the pinned Python packages of scripts/reference
# and scripts/hf. Usage: scripts/reference/setup_venv.sh [VENV_DIR]   (default: ~/.venvs/hc-ref)
# Prints the python path to use on its last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$HOME/.venvs/hc-ref}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
"$venv/bin/python" -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "safetensors", safetensors.__version__)' >&2
echo "$venv/bin/python"
