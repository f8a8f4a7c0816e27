#!/usr/bin/env bash
# A throwaway virtualenv with RecBole 1.2.1, outside the repository, for the reference
# SASRec (bench/reference_sasrec.py). Never a project dependency.
#   bash scripts/recbole_venv.sh /opt/recbole-venv
set -euo pipefail
VENV=${1:?usage: recbole_venv.sh DIR (outside the repository)}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch pinned exactly: that version is a CPU wheel here (anything looser pulls CUDA).
# RecBole 1.2.1 predates numpy 2, pandas 2.3 and scipy 1.14.
"$VENV/bin/python" -m pip install -q torch==2.13.0 recbole==1.2.1 \
    "numpy<2" "pandas<2.3" "scipy<1.14"
"$VENV/bin/python" -c "import recbole, torch; print('recbole', recbole.__version__, 'torch', torch.__version__)"
