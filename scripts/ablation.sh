#!/usr/bin/env bash
# Reproduce the ablation on the embedded catalogue: CLIP-I, CLIP-IA, CLIP-ITA and the project's two
# improvements, each trained by train.py with the same budget and seed, then ranked in one eval.py run
# beside BM25. Writes docs/ablation.md (Table 1 shape) and docs/ablation.png.
#   bash scripts/ablation.sh                     # default budget of train.py
#   bash scripts/ablation.sh --max_steps 300     # extra flags go to every training run
# A finished run (its model.safetensors exists) is not trained again: delete its folder to redo it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && . .venv/bin/activate
OUT=${ABLATION_DIR:-outputs/ablation}
BUDGET=("$@")

run() {
  local name=$1
  shift
  if [ -f "$OUT/$name/model.safetensors" ]; then
    echo "== $name: already trained in $OUT/$name"
  else
    echo "== training $name"
    python train.py --output_dir "$OUT/$name" --report_to none "${BUDGET[@]}" "$@"
  fi
}

run clip-i --variant clip-i
run clip-ia --variant clip-ia
run clip-ita --variant clip-ita
run clip-ita-attention --variant clip-ita --attribute_pooling attention
run clip-ita-multi-positive --variant clip-ita --loss multi_positive

python eval.py --dataset demo --split test --baselines bm25 \
  --model "$OUT/clip-i" --model "$OUT/clip-ia" --model "$OUT/clip-ita" \
  --model "$OUT/clip-ita-attention" --model "$OUT/clip-ita-multi-positive" \
  --output "$OUT/results.json" --table docs/ablation.md --plot docs/ablation.png
