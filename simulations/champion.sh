#!/usr/bin/env bash
# Champion and challengers on replay data (simulations/README.md, "Champion and challengers"):
# the drift scenario in time order and every public set shuffled, 5 seeds each; three
# champions: the default squarecb (with the fixed policies beside it), egreedy, uniform random.
# Run from the repository root after `make setup`; reads ../shared/data/ (see its README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=../shared/data
OUT=simulations/results/champion
mkdir -p "$OUT"
unset BANDIT_POLICY BANDIT_CHALLENGERS BANDIT_REWARD_WEIGHTS BANDIT_LATENCY_BUDGET_MS \
  BANDIT_COST_BUDGET_USD BANDIT_PROMOTE_MIN_EVENTS BANDIT_CHALLENGER_WINDOW

run() {  # OUTNAME POLICIES SET [simulate options]
  local name=$1 policies=$2 set=$3 file arms
  shift 3
  if [ "$set" = drift ]; then
    file=simulations/data/drift.jsonl arms=simulations/data/drift.arms.json
  else
    file=$DATA/$set.jsonl arms=$DATA/$set.arms.json
  fi
  $BIN/bandit-router simulate "$file" --arms "$arms" --policies "$policies" --seeds 5 \
    --no-skyline --no-plots --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2> /dev/null
}

[ -f simulations/data/drift.jsonl ] ||
  $BIN/python -m simulations.generate simulations/scenarios/drift.json simulations/data/drift.jsonl
SETS=${SETS:-"drift mmlu_pro_mixed6 mmlu_pro_qwen15 mmlu_pro_llama2 alpaca_tulu2"}
for set in $SETS; do
  order=()
  [ "$set" = drift ] && order=(--in-order)
  run "$set" "auto:champion=squarecb:challengers=linucb+egreedy,squarecb,linucb,egreedy,best-fixed" \
    "$set" "${order[@]}" &
  run "${set}_weak" "auto:champion=egreedy:challengers=squarecb+linucb" "$set" "${order[@]}" &
  run "${set}_random" "auto:champion=random:challengers=squarecb+linucb,random" "$set" \
    "${order[@]}"
  wait
done
