#!/usr/bin/env bash
# Reproduces every committed result in simulations/results/: about 280 minutes of one core; the
# eighth round's run took an hour, split in two halves side by side (up to tabular.py, then
# warm_start.sh and champion.sh; and from change_points.py on). The ninth round reran the tables
# whose default rows it changes.
# Run from the repository root after `make setup`; reads ../shared/data/ (see its README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=../shared/data
OUT=simulations/results
unset BANDIT_POLICY BANDIT_REWARD_WEIGHTS BANDIT_LATENCY_BUDGET_MS BANDIT_COST_BUDGET_USD
# The default, the first round's, the other explorers and the references (sections 1 and 2).
POLICIES=squarecb,squarecb:gamma_scale=10:learning_rate=0.1:fast_l2=0:coarse=:reward_sd=0,egreedy,linucb,mabwiser,random,static,best-fixed,best-context,oracle

# 1. MMLU-Pro x Llama-2, all 12,032 rows, 5 shuffled seeds, default reward settings.
$BIN/bandit-router simulate $DATA/mmlu_pro_llama2.jsonl --arms $DATA/mmlu_pro_llama2.arms.json \
  --policies $POLICIES --seeds 5 --out $OUT/mmlu > $OUT/mmlu.txt

# 2. The drift scenario in time order (generated, reproducible from its config's seed).
$BIN/python -m simulations.generate simulations/scenarios/drift.json simulations/data/drift.jsonl
$BIN/bandit-router simulate simulations/data/drift.jsonl --arms simulations/data/drift.arms.json \
  --in-order --policies $POLICIES --seeds 5 --out $OUT/drift > $OUT/drift.txt

# 3. Overfitting checks: held-out MMLU-Pro categories, and other reward settings (10 seeds).
$BIN/python -m simulations.split $DATA/mmlu_pro_llama2.jsonl simulations/data
CHECK=squarecb,squarecb:gamma_scale=10:learning_rate=0.1:fast_l2=0:coarse=:reward_sd=0,squarecb:learning_rate=0.05:fast_l2=0:coarse=:reward_sd=0,egreedy,random,static,best-fixed,best-context
for part in tuned heldout; do
  $BIN/bandit-router simulate simulations/data/mmlu_$part.jsonl --arms $DATA/mmlu_pro_llama2.arms.json \
    --policies $CHECK --seeds 10 --no-skyline --out $OUT/mmlu_$part > $OUT/mmlu_$part.txt
done
BANDIT_REWARD_WEIGHTS=accuracy=0.5,latency=0.3,cost=0.2 \
  $BIN/bandit-router simulate $DATA/mmlu_pro_llama2.jsonl --arms $DATA/mmlu_pro_llama2.arms.json \
  --policies $CHECK --seeds 10 --no-skyline --out $OUT/mmlu_cost > $OUT/mmlu_cost.txt
BANDIT_REWARD_WEIGHTS=accuracy=0.8,latency=0.2 BANDIT_LATENCY_BUDGET_MS=6000 \
  $BIN/bandit-router simulate $DATA/mmlu_pro_llama2.jsonl --arms $DATA/mmlu_pro_llama2.arms.json \
  --policies $CHECK --seeds 10 --no-skyline --out $OUT/mmlu_quality > $OUT/mmlu_quality.txt

# 4. Issue 14: the default and the baselines over every public set and two reward settings, plus
# the drift scenario (5 seeds), and what a cold start costs (40 seeds; results/cold_start.md).
$BIN/python -m simulations.robust_eval --seeds 5 squarecb ts ucb static random \
  best-fixed best-context oracle squarecb:fast_l2=0:coarse=:reward_sd=0 squarecb:l2=0.01:fast_l2=0:coarse=:reward_sd=0 \
  --json simulations/data/robust_baselines.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/robust_baselines.json > $OUT/robust_baselines.md
$BIN/python -m simulations.cold_start --seeds 40 > $OUT/cold_start.md
# What one reward per event costs the default: full feedback and evenly spread feedback (results/full_feedback.md).
$BIN/python -m simulations.full_feedback --seeds 5 > $OUT/full_feedback.md
# Where the default's loss comes from: its model's choice and its exploration (results/regret_split.md).
$BIN/python -m simulations.regret_split --seeds 10 squarecb ts > $OUT/regret_split.md
# Learners handed the context's structure, on every set and drift (40 seeds; results/tabular.md).
$BIN/python -m simulations.tabular --seeds 40 > $OUT/tabular.md
# The default on drift with the change points handed over (10 seeds; results/change_points.md).
$BIN/python -m simulations.change_points --seeds 10 squarecb squarecb:coarse=:reward_sd=0 squarecb:fast_l2=0:coarse=:reward_sd=0 \
  squarecb:l2=0.01:fast_l2=0:coarse=:reward_sd=0 'squarecb:fast_l2=0:coarse=:reward_sd=0:vw_args=--ignore W' > $OUT/change_points.md
# Seeds that lock onto a worse arm: the default, the eighth, seventh, sixth and fifth rounds' and ts (results/locks.md).
$BIN/python -m simulations.locks --seeds 10 squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 squarecb:fast_l2=0:coarse=:reward_sd=0 squarecb:l2=0.01:fast_l2=0:coarse=:reward_sd=0 ts > $OUT/locks.md
# Telling the default from an arm-level learner on a set's own traffic (results/selector_power.md).
$BIN/python -m simulations.selector_power --seeds 5 > $OUT/selector_power.md
# Every explorer over every set, drift and a composed nine-arm set; the shapes the defaults were not
# chosen on (results/explorers.md, results/heldout_shapes.md). These, the sets without their app
# facts and the held-out shapes' locks below run the eighth round's default (squarecb:reward_sd=0)
# beside today's.
$BIN/python -m simulations.compose simulations/data
SETS=mmlu_pro_llama2,mmlu_pro_qwen15,mmlu_pro_mixed6,alpaca_tulu2,drift,mmlu_pro_nine
$BIN/python -m simulations.robust_eval --seeds 5 --sets $SETS squarecb squarecb:reward_sd=0 ts ucb egreedy bag cover \
  regcb softmax rnd linucb --json simulations/data/explorers.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/explorers.json > $OUT/explorers.md
$BIN/python -m simulations.robust_eval --seeds 5 --sets mmlu_pro_nine,mmlu_pro_two,mmlu_pro_top2 \
  --rewards default,budget5000,accuracy squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 ts ucb static random \
  --json simulations/data/heldout_mmlu.json > /dev/null
$BIN/python -m simulations.robust_eval --seeds 5 --sets alpaca_tulu2 --rewards rating \
  squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 ts ucb static random --json simulations/data/heldout_rating.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/heldout_mmlu.json \
  simulations/data/heldout_rating.json > $OUT/heldout_shapes.md
# The public sets without their app facts, 10 seeds (results/bare_sets.md).
BARE=mmlu_pro_llama2_bare,mmlu_pro_qwen15_bare,mmlu_pro_mixed6_bare,alpaca_tulu2_bare
$BIN/python -m simulations.robust_eval --seeds 10 --sets $BARE squarecb squarecb:reward_sd=0 ts ucb static random \
  --json simulations/data/bare_sets.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/bare_sets.json > $OUT/bare_sets.md
# Seeds that lock onto a worse arm on those shapes, 10 seeds (results/locks_heldout.md).
$BIN/python -m simulations.locks --seeds 10 --sets mmlu_pro_nine,mmlu_pro_two,mmlu_pro_top2 \
  --rewards default,budget5000,accuracy squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 ts > $OUT/locks_heldout.md
$BIN/python -m simulations.locks --seeds 10 --sets alpaca_tulu2 --rewards rating \
  squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 ts >> $OUT/locks_heldout.md
# The third round's l2 default against the one before it, 10 seeds, both without the fourth
# round's gap_prior and thinning (results/l2_default.md).
$BIN/python -m simulations.robust_eval --seeds 10 squarecb:l2=0:gap_prior=0:dominated_z=0:fast_l2=0:coarse=:reward_sd=0 \
  squarecb:l2=0.001:gap_prior=0:dominated_z=0:fast_l2=0:coarse=:reward_sd=0 --json simulations/data/l2_default.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/l2_default.json > $OUT/l2_default.md
# The default (the ninth round's) against the eighth, seventh, sixth, fifth (l2 0.01) and third rounds'
# and the fourth round's steps, 10 seeds (results/exploration_default.md).
$BIN/python -m simulations.robust_eval --seeds 10 squarecb squarecb:reward_sd=0 squarecb:coarse=:reward_sd=0 squarecb:fast_l2=0:coarse=:reward_sd=0 squarecb:l2=0.01:fast_l2=0:coarse=:reward_sd=0 \
  squarecb:l2=0.001:gap_prior=0:fast_l2=0:coarse=:reward_sd=0 squarecb:l2=0.001:gap_prior=0:dominated_z=0:fast_l2=0:coarse=:reward_sd=0 ts ucb static random best-fixed best-context oracle \
  --json simulations/data/exploration_default.json > /dev/null
$BIN/python -m simulations.robust_table simulations/data/exploration_default.json \
  > $OUT/exploration_default.md
# Every spec of the thirteenth session on the same 10 seeds, each the mean over the pairs against
# the worst pair, and the share of its 5-seed draws meeting both stationary targets
# (results/frontier.md, results/frontier.png; about 75 minutes).
FRONTIER=(squarecb squarecb:learning_rate=0.04 squarecb:learning_rate=0.08 "squarecb:vw_args=--power_t 0.7"
  squarecb:l2=0.0005 squarecb:l2=0.002 squarecb:fast_l2=0.01 squarecb:fast_l2=0.04 squarecb:fast_l2=0
  squarecb:mix_discount=0.99 squarecb:mix_discount=0.998 squarecb:mix_discount=0.999 squarecb:mix_discount=0.9995
  squarecb:gamma_scale=10 squarecb:gamma_scale=15 squarecb:gamma_scale=30 squarecb:gamma_scale=40
  squarecb:dominated_share=0.1 squarecb:dominated_share=1 squarecb:dominated_z=1.5 squarecb:dominated_z=3
  squarecb:gap_prior=5 squarecb:gap_prior=20 squarecb:reward_sd=0 squarecb:coarse= squarecb:arm_centre=30
  ts ucb cover regcb)
$BIN/python -m simulations.robust_eval --seeds 10 "${FRONTIER[@]}" --json simulations/data/frontier.json > /dev/null
$BIN/python -m simulations.frontier simulations/data/frontier.json --png $OUT/frontier.png > $OUT/frontier.md
# A long life, then an upgrade: squarecb without and with a horizon, 6 seeds, and the default
# against 16,384 on 16 (results/long_life.txt, results/long_life_16.txt, behind
# results/long_life_exploration.md; about 45 minutes of one core, run on two).
$BIN/python -m simulations.generate simulations/scenarios/long_drift.json simulations/data/long_drift.jsonl
$BIN/python -m simulations.long_life --seeds 6 squarecb squarecb:horizon=16384 squarecb:horizon=32768 \
  squarecb:horizon=65536 squarecb:horizon=4096 squarecb:horizon=1024 > $OUT/long_life.txt
$BIN/python -m simulations.long_life --seeds 16 squarecb squarecb:horizon=16384 > $OUT/long_life_16.txt
# the same with the change at 300,000 events, 4 seeds (results/long_life_300k.txt; about 16
# minutes of one core)
$BIN/python -m simulations.generate simulations/scenarios/long_drift_300k.json simulations/data/long_drift_300k.jsonl
$BIN/python -m simulations.long_life --replay simulations/data/long_drift_300k.jsonl --seeds 4 squarecb \
  squarecb:horizon=16384 > $OUT/long_life_300k.txt
# Warm start and champion and challengers (results/warm_start.txt, results/champion/).
simulations/warm_start.sh
simulations/champion.sh
