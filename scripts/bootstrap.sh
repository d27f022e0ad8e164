#!/usr/bin/env bash
# Create the virtual environment and install fb3stack with everything it needs.
# - CPU machine: installs the CPU build of torch (pinned; a plain `pip install torch` pulls a multi-GB CUDA build).
# - GPU machine, or a torch already importable (e.g. a system/Kaggle CUDA build): that torch is kept.
# Override the torch requirement with FB3STACK_TORCH (e.g. FB3STACK_TORCH="torch==2.13.0 --index-url ...").
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV (system site-packages visible, so an installed CUDA torch is reused)"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if "$PY" -c "import torch" 2>/dev/null; then
  echo "[bootstrap] keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif [ -n "${FB3STACK_TORCH:-}" ]; then
  # shellcheck disable=SC2086
  "${PIP[@]}" $FB3STACK_TORCH
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[bootstrap] GPU found: installing the default (CUDA) torch build"
  "${PIP[@]}" "torch>=2.6"
else
  echo "[bootstrap] no GPU: installing the CPU torch build"
  "${PIP[@]}" "torch==2.13.0" || "${PIP[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi

"${PIP[@]}" -e ".[dev]"
echo "[bootstrap] ready: $("$PY" -c 'import fb3stack, torch, transformers; print("fb3stack", fb3stack.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__)')"
