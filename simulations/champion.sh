#!/usr/bin/env bash
# Champion and challengers on replay data (simulations/README.md, "Champion and challengers"):
# every public set, shuffled, and the drift scenario in time order; 5 seeds each.
# Run from the repository root after `make setup`; reads ../shared/data/ (see its README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=../shared/data
OUT=simulations/results/champion
mkdir -p "$OUT"
unset BANDIT_POLICY BANDIT_CHALLENGERS BANDIT_REWARD_WEIGHTS BANDIT_LATENCY_BUDGET_MS \
  BANDIT_COST_BUDGET_USD BANDIT_PROMOTE_MIN_EVENTS BANDIT_CHALLENGER_WINDOW
POLICIES="auto:champion=squarecb:challengers=linucb+egreedy,auto:champion=egreedy:challengers=squarecb+linucb,squarecb,linucb,egreedy,best-fixed"

for set in mmlu_pro_llama2 mmlu_pro_qwen15 mmlu_pro_mixed6 alpaca_tulu2; do
  $BIN/bandit-router simulate $DATA/$set.jsonl --arms $DATA/$set.arms.json --policies "$POLICIES" \
    --seeds 5 --no-skyline --no-plots --out $OUT/$set > $OUT/$set.txt 2> /dev/null
done
[ -f simulations/data/drift.jsonl ] ||
  $BIN/python -m simulations.generate simulations/scenarios/drift.json simulations/data/drift.jsonl
$BIN/bandit-router simulate simulations/data/drift.jsonl --arms simulations/data/drift.arms.json \
  --in-order --policies "$POLICIES" --seeds 5 --no-skyline --no-plots --out $OUT/drift \
  > $OUT/drift.txt 2> /dev/null
