#!/usr/bin/env bash
# Runs ablations of the main job one after another; a finished row is skipped on a rerun.
# Short rows: 12,800 training examples (400 batches of 32, or 133 grouped steps of 3 x 32). `pal` runs the main job's
# whole budget (1,400 batches of 32) to compare with the main job itself. Full dev sets.
#   bash benchmarks/ablation_queue.sh [ROW ...]
set -u
cd "$(dirname "$0")/.."
base="hf-multitask train examples/cs224n/main.yaml --max_steps 400"
grouped="hf-multitask train examples/cs224n/main.yaml --max_steps 133 --task_sampling_grouped true"
# The main job's budget in grouped mode: 44,800 examples = 466 steps of one batch of 32 from each of the 3 tasks.
grouped_main="hf-multitask train examples/cs224n/main.yaml --max_steps 466 --task_sampling_grouped true"
declare -A rows=(
  [baseline]="$base"
  [smart]="$base --smart_tasks sst sts"
  [ordinal]="$base --task_overrides {\"sst\":{\"loss\":\"ordinal\"}}"
  [pal]="hf-multitask train examples/cs224n/main.yaml --pal_rank 102"
  [grouped_none]="$grouped --gradient_surgery none"
  [grouped_pcgrad]="$grouped --gradient_surgery pcgrad"
  [grouped_gradvac]="$grouped --gradient_surgery gradvac"
  [main_grouped_none]="$grouped_main --gradient_surgery none"
  [main_grouped_pcgrad]="$grouped_main --gradient_surgery pcgrad"
  [main_grouped_gradvac]="$grouped_main --gradient_surgery gradvac"
)
order=("${@:-baseline smart ordinal grouped_none grouped_pcgrad grouped_gradvac pal main_grouped_none main_grouped_pcgrad main_grouped_gradvac}")
for row in ${order[@]}; do
  out="runs/ablation/$row"
  if [ -f "$out/eval_results.json" ]; then echo "skip $row (done)"; continue; fi
  echo "=== $row: ${rows[$row]} --output_dir $out"
  mkdir -p "$out"
  HF_HUB_OFFLINE=1 /usr/bin/time -v ${rows[$row]} --output_dir "$out" > "$out.log" 2>&1 || echo "FAILED $row"
  grep -E "Elapsed|task |^(sst|quora|sts|overall) " "$out.log"
done
