#!/usr/bin/env bash
# NOT RUN YET (docs/distill_study.md, "Corrections"): the measurement that would settle which
# student sampler is better, and the control matched to round 2. Run from the repository root on a
# free machine, after the judge of docs/distill_study.md (judges/gpt2-debian) exists. On the 2-core
# CPU of the study it would take roughly: the grid-trained rounds ~40 min, the 100-step control
# ~15 min, the 64 evaluations ~20-60 s each.
#   bash docs/distill_study/compare_samplers.sh
set -euo pipefail
teacher=elf_fast/assets/elf_xs_debian_en.safetensors
cfg=docs/distill_study/distill_debian_xs.yaml
# 1. students trained where a uniform-grid sampler steps (t_s on the k-step grid), beside the
#    study's logit-normal ones (runs/distill_study, the study's first command)
[ -d runs/distill_study/round2_4steps ] || python training/distill.py --config $cfg --teacher $teacher --rounds 8,4
python training/distill.py --config $cfg --teacher $teacher --rounds 8,4 --student-schedule grid \
  --override train.out_dir=runs/distill_study_grid
# 2. the control matched to round 2's cumulative 100 optimiser steps (the study's control had 50)
python training/distill.py --config $cfg --teacher $teacher --rounds 64 --substeps 1 \
  --override train.max_steps=100 --override train.out_dir=runs/distill_control100
# 3. every student at its own step count, with the uniform-grid ODE (the old recommendation, what a
#    grid-trained student recommends) and the port's few-step SDE on the logit-normal grid (what a
#    logit-normal-trained student recommends now), 4 seeds (the logit-normal grid is drawn per seed)
ev() {  # name ckpt steps
  for seed in 0 1 2 3; do
    for grid in uniform logit_normal; do
      python -m elf_fast.evaluate sweep --checkpoint "$2" --steps "$3" --samplers ode sde --gammas 1.5 \
        --w-sc 2.5 --grid $grid --num-samples 64 --length 64 --seed $seed --ppl-model judges/gpt2-debian \
        --no-progress --out-dir docs/distill_study/eval_samplers/$1/steps$3_${grid}_seed$seed
    done
  done
}
ev ln_round1_8steps runs/distill_study/round1_8steps/ckpt_00000050/ema.safetensors 8
ev ln_round2_4steps runs/distill_study/round2_4steps/ckpt_00000050/ema.safetensors 4
ev grid_round1_8steps runs/distill_study_grid/round1_8steps/ckpt_00000050/ema.safetensors 8
ev grid_round2_4steps runs/distill_study_grid/round2_4steps/ckpt_00000050/ema.safetensors 4
ev control100 runs/distill_control100/round1_64steps/ckpt_00000100/ema.safetensors 4
ev control100 runs/distill_control100/round1_64steps/ckpt_00000100/ema.safetensors 8
