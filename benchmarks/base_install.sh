#!/usr/bin/env bash
# The base install, without extras: a fresh virtual environment with `pip install .` (no torch,
# transformers, sentence-transformers, dask, umap-learn, fastapi, httpx) builds the Baron human
# pancreas atlas and annotates Baron mouse with the default method, as `make run` does.
#
#   bash benchmarks/base_install.sh
#
# The environment and its outputs go under the cache folder ($SCREADER_DB_HOME, else the
# platform's user cache folder, ~/.cache/screader-db on Linux), in base-install/; the data comes
# from the same cache (`screader-db fetch` downloads what is not there yet). Prints the time of
# each step and the agreement line; the labels are compared with results/baron_mouse_labels.csv
# when `make run` has written it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export SCREADER_DB_HOME="${SCREADER_DB_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/screader-db}"
WORK="$SCREADER_DB_HOME/base-install"
VENV="$WORK/venv"
BIN="$VENV/bin"
# The extras' own modules (pydantic is left out: typer requires it too).
EXTRA_MODULES="torch transformers sentence_transformers gguf accelerate dask distributed umap fastapi uvicorn httpx"

step() {  # step NAME COMMAND...: run it, print its wall time
    local name="$1" began
    shift
    began=$(date +%s)
    "$@"
    echo "[base-install] $name: $(( $(date +%s) - began )) s"
}

rm -rf "$WORK"
mkdir -p "$WORK/results"
step "venv" "$PYTHON" -m venv "$VENV"
step "pip install . (no extras)" "$BIN/python" -m pip install -q -c "$ROOT/constraints.txt" "$ROOT"

# No extra may have come in through another package's requirements.
"$BIN/python" - $EXTRA_MODULES <<'EOF'
import importlib.util
import sys

present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"the base install brought in {', '.join(present)}")
print("[base-install] none of the extras' modules is installed:", " ".join(sys.argv[1:]))
EOF

cd "$WORK"  # away from the checkout, so the installed package is the one imported
step "fetch" "$BIN/screader-db" fetch
step "build" "$BIN/screader-db" build --reference baron_human --label-key cell_ontology_class \
    --atlas "$WORK/atlas" --dataset-name baron_human --overwrite
step "query" "$BIN/screader-db" query baron_mouse --atlas "$WORK/atlas" --truth-key cell_ontology_class \
    --out "$WORK/results/baron_mouse_annotated.h5ad" --table "$WORK/results/baron_mouse_labels.csv" --overwrite \
    | tee "$WORK/query.log"

"$BIN/python" - "$WORK/results/baron_mouse_labels.csv" "$ROOT/results/baron_mouse_labels.csv" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

mine, full = Path(sys.argv[1]), Path(sys.argv[2])
if not full.is_file():
    sys.exit(0)
a, b = pd.read_csv(mine, index_col="cell"), pd.read_csv(full, index_col="cell")
same = (a["label"].astype(str) == b["label"].reindex(a.index).astype(str)).mean()
print(f"[base-install] labels equal to the full install's ({full}): {same:.2%} of {len(a):,} cells; "
      f"largest score difference {(a['score'] - b['score'].reindex(a.index)).abs().max():.2g}")
EOF
