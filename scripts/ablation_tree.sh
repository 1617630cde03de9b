#!/usr/bin/env bash
# Issue 13 ablation: new product types under the right parent, on BOTH generated catalogues (the demo one
# and `python -m clipita.catalogue --layout hard`), per depth, seen / unseen, new / known product types.
# Rows: the paper's recipe read with each --node_scoring (node: the paper; max_leaf; tree;
# marginal: the default), broad dropout with the paper's uniform draw of nodes and mean pooling (the default
# before the leaf share) read with node, tree and marginal, and train.py's default (DEFAULT_LEAF: leaf share
# 0.5, broad dropout title:0.5, attention pooling) read with marginal. Every row is trained / evaluated for
# each seed; docs/ablation_tree.md and .png show the mean and the spread (min-max) over seeds (levels with few
# queries are noisy).
#   bash scripts/ablation_tree.sh                                   # seeds 0,1,2, train.py's default budget
#   bash scripts/ablation_tree.sh --seeds 0 --max_steps 5           # smoke test; other flags go to train.py
# Environment: TREE_ABLATION_DIR (default outputs/ablation_tree), HARD_PRODUCTS (default 5000),
# BROAD_DROPOUT (default title:0.25), ALSO_BROAD_DROPOUT (more rates, space-separated, each read with
# marginal scoring: e.g. "title:0.5"), TREE_ABLATION_DOCS (default docs; where table and plot go),
# TREE_ABLATION_CATALOGUES (default "hard demo"; e.g. "hard" to add seeds to one catalogue), ALSO_LOSS (rows of
# another loss, read with marginal scoring, space-separated, each LOSS or LOSS=BROAD_DROPOUT (default: BROAD),
# e.g. "path_positive path_positive=title:0.25,image:0.5"). Rows without a LOSS train with --loss infonce.
# ALSO_POOLING: rows with another --attribute_pooling, default broad dropout, read with marginal scoring,
# space-separated, each POOLING or POOLING=LOSS (default: infonce), e.g. "attention attention=path_positive".
# ALSO_LEAF: rows with --leaf_probability (the leaf pairs' share of the "all" level), read with marginal scoring,
# space-separated, each P or P=BROAD_DROPOUT or P=BROAD_DROPOUT=POOLING (defaults: BROAD, mean pooling), e.g.
# "0.5=title:0.5 0.5=title:0.5=attention". Every row is trained from --paper_recipe (uniform draw, mean pooling,
# no broad dropout, InfoNCE) and names only what it changes.
# TREE_ABLATION_JOBS=N (default 1): train N runs at once, then evaluate N at once, each job logging to
# RUN_FOLDER.log / RESULT.log (on a GPU machine; on CPU also set OMP_NUM_THREADS, e.g. to cores / N).
# A finished run (its model.safetensors exists) is not trained again, nor a result newer than its model
# evaluated again: delete the folder / the result to redo it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && . .venv/bin/activate
OUT=${TREE_ABLATION_DIR:-outputs/ablation_tree}
DOCS=${TREE_ABLATION_DOCS:-docs}
HARD_PRODUCTS=${HARD_PRODUCTS:-5000}
BROAD=${BROAD_DROPOUT:-title:0.25}
ALSO_BROAD=${ALSO_BROAD_DROPOUT:-}
ALSO_LOSS=${ALSO_LOSS:-}
ALSO_POOLING=${ALSO_POOLING:-}
ALSO_LEAF=${ALSO_LEAF:-}
DEFAULT_LEAF=0.5=title:0.5=attention  # train.py's defaults: leaf share, broad dropout, pooling (a test checks)
CATALOGUES=${TREE_ABLATION_CATALOGUES:-hard demo}
JOBS=${TREE_ABLATION_JOBS:-1}
SEEDS=0,1,2
BUDGET=()
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) SEEDS=$2; shift 2 ;;
    --seeds=*) SEEDS=${1#--seeds=}; shift ;;
    *) BUDGET+=("$1"); shift ;;
  esac
done

HARD="$OUT/data/hard"
if [[ " $CATALOGUES " == *" hard "* && ! -f "$HARD/catalogue.json" ]]; then
  python -m clipita.catalogue --layout hard --num_products "$HARD_PRODUCTS" --seed 0 --output_dir "$HARD"
fi

# With TREE_ABLATION_JOBS > 1 the rows are walked twice: PHASE=train queues the trainings, PHASE=evaluate
# the evaluations; each queue then runs N jobs at once. With 1, one walk runs each command in turn.
PHASE=all
QUEUE=
run() {  # log-file command...: run it now, or queue it (its output to the log file)
  local log=$1
  shift
  if [ -n "$QUEUE" ]; then
    printf '%q ' "$@" >>"$QUEUE"
    printf '> %q 2>&1\n' "$log" >>"$QUEUE"
  else
    "$@"
  fi
}

train() {  # dataset-name dataset run-name seed flags...
  local ds=$1 data=$2 name=$3 seed=$4
  shift 4
  local dir="$OUT/$ds/$name-s$seed"
  [ "$PHASE" = evaluate ] && return
  if [ -f "$dir/model.safetensors" ]; then
    echo "== $ds $name seed $seed: already trained in $dir"
  else
    echo "== training $ds $name seed $seed"
    mkdir -p "$OUT/$ds"
    run "$dir.log" python train.py --dataset "$data" --output_dir "$dir" --overwrite_output_dir --report_to none \
      --seed "$seed" --paper_recipe "${BUDGET[@]}" "$@"
  fi
}

evaluate() {  # dataset-name dataset run-name seed node-scoring row-name
  local ds=$1 data=$2 name=$3 seed=$4 scoring=$5 row=$6
  local out="$OUT/$ds/results/$row-s$seed.json"
  [ "$PHASE" = train ] && return
  if [ -f "$out" ] && [ "$out" -nt "$OUT/$ds/$name-s$seed/model.safetensors" ]; then
    echo "== $ds $row seed $seed: already evaluated in $out"
    return
  fi
  mkdir -p "$OUT/$ds/results"
  run "$out.log" python eval.py --dataset "$data" --split test --baselines none --settings all \
    --model "$OUT/$ds/$name-s$seed" --node_scoring "$scoring" --output "$out"
}

rows() {
  for ds in $CATALOGUES; do
    case $ds in
      hard) data=$HARD ;;
      demo) data=demo ;;
      *) echo "error: TREE_ABLATION_CATALOGUES: unknown catalogue '$ds' (hard, demo)" >&2; exit 2 ;;
    esac
    for seed in ${SEEDS//,/ }; do
      train "$ds" "$data" paper "$seed"
      train "$ds" "$data" broad-dropout "$seed" --broad_dropout "$BROAD"
      evaluate "$ds" "$data" paper "$seed" node "paper"
      evaluate "$ds" "$data" paper "$seed" max_leaf "paper + max_leaf"
      evaluate "$ds" "$data" paper "$seed" tree "paper + tree"
      evaluate "$ds" "$data" paper "$seed" marginal "paper + marginal"
      evaluate "$ds" "$data" broad-dropout "$seed" node "broad dropout"
      evaluate "$ds" "$data" broad-dropout "$seed" tree "broad dropout + tree"
      evaluate "$ds" "$data" broad-dropout "$seed" marginal "broad dropout + marginal"
      for spec in $ALSO_BROAD; do
        train "$ds" "$data" "broad-dropout-${spec//[:,]/-}" "$seed" --broad_dropout "$spec"
        evaluate "$ds" "$data" "broad-dropout-${spec//[:,]/-}" "$seed" marginal "broad dropout $spec + marginal"
      done
      for entry in $ALSO_POOLING; do
        pooling=${entry%%=*}
        loss=infonce name="broad-dropout-$pooling-pooling" row="broad dropout + $pooling pooling + marginal"
        if [ "$entry" != "$pooling" ]; then
          loss=${entry#*=} name="broad-dropout-$pooling-pooling-$loss" row="broad dropout + $pooling pooling + $loss + marginal"
        fi
        train "$ds" "$data" "$name" "$seed" --broad_dropout "$BROAD" --loss "$loss" --attribute_pooling "$pooling"
        evaluate "$ds" "$data" "$name" "$seed" marginal "$row"
      done
      for entry in $(printf '%s\n' "$DEFAULT_LEAF" $ALSO_LEAF | awk '!seen[$0]++'); do
        IFS== read -r p spec pooling <<<"$entry"
        spec=${spec:-$BROAD} pooling=${pooling:-mean}
        name="leaf-$p-broad-dropout-${spec//[:,]/-}" row="leaf $p + broad dropout $spec"
        if [ "$pooling" != mean ]; then
          name="$name-$pooling-pooling" row="$row + $pooling pooling"
        fi
        train "$ds" "$data" "$name" "$seed" --leaf_probability "$p" --broad_dropout "$spec" \
          --attribute_pooling "$pooling"
        evaluate "$ds" "$data" "$name" "$seed" marginal "$row + marginal"
      done
      for entry in $ALSO_LOSS; do
        loss=${entry%%=*}
        spec=$BROAD name="broad-dropout-$loss" row="broad dropout + $loss + marginal"
        if [ "$entry" != "$loss" ]; then
          spec=${entry#*=} name="broad-dropout-${spec//[:,]/-}-$loss" row="broad dropout ${entry#*=} + $loss + marginal"
        fi
        train "$ds" "$data" "$name" "$seed" --broad_dropout "$spec" --loss "$loss"
        evaluate "$ds" "$data" "$name" "$seed" marginal "$row"
      done
    done
  done

}

if [ "$JOBS" -le 1 ]; then
  rows
else
  case " $CATALOGUES " in *" demo "*) python -m clipita.data --dataset demo ;; esac
  for PHASE in train evaluate; do
    QUEUE=$(mktemp)
    rows
    echo "== $PHASE: $(wc -l <"$QUEUE") jobs, $JOBS at a time"
    xargs -P "$JOBS" -I{} -d '\n' bash -c {} <"$QUEUE" || status=$?
    rm -f "$QUEUE"
    if [ "${status:-0}" -ne 0 ]; then
      echo "error: some $PHASE jobs failed; their logs are beside their runs / results" >&2
      exit 1
    fi
  done
fi

python scripts/ablation_tree.py --runs "$OUT" --table "$DOCS/ablation_tree.md" --plot "$DOCS/ablation_tree.png" \
  --command "bash scripts/ablation_tree.sh --seeds $SEEDS ${BUDGET[*]}"
