#!/usr/bin/env bash
# Which sampler suits a progressively distilled student, on text (docs/distill_study.md, "Sampler
# on text"), and the control matched to round 2's cumulative optimiser steps. Run 2026-12-06 from
# the repository root on the 2-core Xeon (shared), every job with OMP_NUM_THREADS=1:
#   bash docs/distill_study/compare_samplers.sh            # SEEDS="0 1 2 3 4 5" by default (run as
#                                                          # two SEEDS=... streams side by side; reruns skip done cells)
#   python docs/distill_study/summarise_samplers.py        # eval_samplers/table.md
# Needs the judge of docs/distill_study.md (judges/gpt2-debian, not committed) and data/debian/en.
# The teacher is pinned: the built-in model as of commit ddc750e (the study's teacher; the package's
# asset may be a newer model), written to runs/elf_xs_debian_en_v1.safetensors below.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SEEDS=${SEEDS:-"0 1 2 3 4 5"}
NUM_SAMPLES=${NUM_SAMPLES:-64}
SAMPLERS=${SAMPLERS:-"ode_uniform sde_ln ode_ln sde_uniform"}
teacher=runs/elf_xs_debian_en_v1.safetensors
cfg=docs/distill_study/distill_debian_xs.yaml
out=docs/distill_study/eval_samplers
mkdir -p runs
[ -f $teacher ] || git show ddc750e:elf_fast/assets/elf_xs_debian_en.safetensors > $teacher

# 1. students: t_s logit-normal (the default, the port's) and t_s on the k-step grid
#    (--student-schedule grid), rounds 8 then 4, 50 optimiser steps each (the study's config)
[ -f runs/distill_study/round2_4steps/ckpt_00000050/ema.safetensors ] || \
  python training/distill.py --config $cfg --teacher $teacher --rounds 8,4
[ -f runs/distill_study_grid/round2_4steps/ckpt_00000050/ema.safetensors ] || \
  python training/distill.py --config $cfg --teacher $teacher --rounds 8,4 --student-schedule grid \
    --override train.out_dir=runs/distill_study_grid
# 2. controls: the same loop, a 64-step "student" with 1 teacher sub-step (target = the teacher's own
#    prediction: no few-step skill), 50 optimiser steps (matches round 1) and 100 (matches round 2's
#    cumulative 50 + 50; its own lr schedule over 100 steps)
[ -f runs/distill_control50/round1_64steps/ckpt_00000050/ema.safetensors ] || \
  python training/distill.py --config $cfg --teacher $teacher --rounds 64 --substeps 1 \
    --override train.out_dir=runs/distill_control50
[ -f runs/distill_control100/round1_64steps/ckpt_00000100/ema.safetensors ] || \
  python training/distill.py --config $cfg --teacher $teacher --rounds 64 --substeps 1 \
    --override train.max_steps=100 --override train.out_dir=runs/distill_control100

# 3. each model at its step count with both samplers, the same seeds, samples and judge:
#    ode_uniform = ODE on the uniform grid; sde_ln = the port's few-step SDE on the logit-normal grid
#    (gamma 1.5), both w_sc 2.5 (the port's few-step w_sc up to 8 steps); ode_ln and sde_uniform,
#    the crossed pairs, tell the grid's effect from the SDE's
ev() {  # name ckpt steps
  for seed in $SEEDS; do
    for s in $SAMPLERS; do
      case $s in
        ode_uniform) args="--sampler ode --grid uniform" ;;
        sde_ln) args="--sampler sde --gamma 1.5 --grid logit_normal" ;;
        ode_ln) args="--sampler ode --grid logit_normal" ;;
        sde_uniform) args="--sampler sde --gamma 1.5 --grid uniform" ;;
      esac
      d=$out/$1/steps$3_${s}_seed$seed
      [ -f $d/report.json ] && continue
      python -m elf_fast.evaluate run --checkpoint "$2" --steps "$3" $args --sc-cfg 2.5 \
        --num-samples $NUM_SAMPLES --length 64 --seed $seed --ppl-model judges/gpt2-debian \
        --no-progress --out-dir $d > /dev/null
      [ "$seed" = 0 ] || rm -f $d/samples.jsonl   # samples kept for seed 0 only (size)
    done
  done
}
ev teacher $teacher 8
ev teacher $teacher 4
ev ln_round1_8steps runs/distill_study/round1_8steps/ckpt_00000050/ema.safetensors 8
ev ln_round2_4steps runs/distill_study/round2_4steps/ckpt_00000050/ema.safetensors 4
ev grid_round1_8steps runs/distill_study_grid/round1_8steps/ckpt_00000050/ema.safetensors 8
ev grid_round2_4steps runs/distill_study_grid/round2_4steps/ckpt_00000050/ema.safetensors 4
ev control50 runs/distill_control50/round1_64steps/ckpt_00000050/ema.safetensors 8
ev control100 runs/distill_control100/round1_64steps/ckpt_00000100/ema.safetensors 4
ev control100 runs/distill_control100/round1_64steps/ckpt_00000100/ema.safetensors 8
# 4. real validation text under this judge (the study's 128 texts of 64 MiniLM tokens)
[ -f $out/real_text/report.json ] || python -m elf_fast.evaluate run --texts docs/study/real_validation_64tok.jsonl \
  --ppl-model judges/gpt2-debian --no-progress --out-dir $out/real_text > /dev/null && rm -f $out/real_text/samples.jsonl
