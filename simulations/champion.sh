#!/usr/bin/env bash
# Champion and challengers on replay data (simulations/README.md, "Champion and challengers"):
# the drift scenario in time order and every public set shuffled, 5 seeds each, two at a time.
# Run from the repository root after `make setup`; reads ../shared/data/ (see its README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=../shared/data
OUT=simulations/results/champion
mkdir -p "$OUT"
unset BANDIT_POLICY BANDIT_CHALLENGERS BANDIT_REWARD_WEIGHTS BANDIT_LATENCY_BUDGET_MS \
  BANDIT_COST_BUDGET_USD BANDIT_PROMOTE_MIN_EVENTS BANDIT_CHALLENGER_WINDOW
POLICIES="auto:champion=squarecb:challengers=linucb+egreedy,squarecb,linucb,egreedy,best-fixed"

run() {  # NAME FILE ARMS [simulate options]
  local name=$1 file=$2 arms=$3
  shift 3
  $BIN/bandit-router simulate "$file" --arms "$arms" --policies "$POLICIES" --seeds 5 \
    --no-skyline --no-plots --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2> /dev/null
}

[ -f simulations/data/drift.jsonl ] ||
  $BIN/python -m simulations.generate simulations/scenarios/drift.json simulations/data/drift.jsonl
run drift simulations/data/drift.jsonl simulations/data/drift.arms.json --in-order &
run mmlu_pro_mixed6 $DATA/mmlu_pro_mixed6.jsonl $DATA/mmlu_pro_mixed6.arms.json &
wait
run mmlu_pro_qwen15 $DATA/mmlu_pro_qwen15.jsonl $DATA/mmlu_pro_qwen15.arms.json &
run mmlu_pro_llama2 $DATA/mmlu_pro_llama2.jsonl $DATA/mmlu_pro_llama2.arms.json &
wait
run alpaca_tulu2 $DATA/alpaca_tulu2.jsonl $DATA/alpaca_tulu2.arms.json
