#!/usr/bin/env bash
# Warm start on every public set: the first 20% of each seed's rows train squarecb and linucb
# (full feedback), the rest is replayed beside the same policies started cold (3 seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=../shared/data
OUT=simulations/results/warm_start.txt
: > $OUT
for set in mmlu_pro_llama2 mmlu_pro_qwen15 mmlu_pro_mixed6 alpaca_tulu2; do
  echo "## $set" >> $OUT
  $BIN/bandit-router simulate $DATA/$set.jsonl --arms $DATA/$set.arms.json --seeds 3 \
    --policies squarecb,cold:squarecb,linucb,cold:linucb,best-fixed --warm-start 0.2 \
    --no-skyline 2>/dev/null >> $OUT
  echo >> $OUT
done
