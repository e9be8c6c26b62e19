#!/usr/bin/env bash
# The evaluations of docs/distill_study.md: MODEL STEPS... (run from the repository root).
#   bash docs/distill_study/run_evals.sh teacher 1 2 4 8 16
#   bash docs/distill_study/run_evals.sh round1_8steps 1 2 4 8 16
#   bash docs/distill_study/run_evals.sh control 1 2 4 8 16   (the self-distillation control)
set -euo pipefail
model=$1; shift
case $model in
  teacher) ckpt=runs/elf_xs_debian_en_v1.safetensors ;;  # the built-in model of commit ddc750e (compare_samplers.sh writes it)
  round1_8steps|round2_4steps) ckpt=runs/distill_study/$model/ckpt_00000050/ema.safetensors ;;
  control) ckpt=runs/distill_control/round1_64steps/ckpt_00000050/ema.safetensors ;;  # --rounds 64 --substeps 1
  *) echo "unknown model $model" >&2; exit 2 ;;
esac
for k in "$@"; do
  out=docs/distill_study/eval/$model/steps$k
  [ -f "$out/report.json" ] && { echo "skip $out"; continue; }
  /usr/bin/time -f "$model steps $k: %e s wall" \
    python -m elf_fast.evaluate run --checkpoint "$ckpt" --steps "$k" --sampler ode --grid uniform \
      --sc-cfg 2.5 --num-samples 64 --length 64 --seed 0 --ppl-model judges/gpt2-debian \
      --no-progress --out-dir "$out"
done
