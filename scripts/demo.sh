#!/usr/bin/env bash
# The main job on the embedded catalogue, from a fresh machine: set up, generate the catalogue,
# train CLIP-ITA, evaluate it on the test split (with the BM25 baseline), build the search index,
# query it, and check the model folder is ready for the Hub. Extra flags go to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
OUT=${CLIPITA_OUTPUTS:-outputs}
start=$(date +%s)
python -m clipita.data --dataset demo   # generates the embedded catalogue on first use, prints its splits
python train.py --output_dir "$OUT/clip-ita" --overwrite_output_dir "$@"
python eval.py --model "$OUT/clip-ita" --dataset demo --split test --baselines bm25 \
  --output "$OUT/results.json" --plot "$OUT/results.png"
python search.py build --model "$OUT/clip-ita" --dataset demo --split test --output "$OUT/index"
# A seen leaf told from its siblings by an attribute alone; the query prints its P@10 beside the hits.
python search.py query --index "$OUT/index" --k 5 "Kids T-Shirts"
python release.py --model "$OUT/clip-ita" --eval_results "$OUT/results.json"
echo "main job done in $(( $(date +%s) - start )) s (after setup)"
echo "Open the Space: .venv/bin/python space/app.py   then browse http://127.0.0.1:7860"
