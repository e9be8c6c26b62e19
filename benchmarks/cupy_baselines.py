"""CuPy baselines: the element-wise kernel a user would write by hand instead of elf_fast's op.

Each factory takes the benchmark's CUDA tensors, views them as CuPy arrays through DLPack
(zero-copy, done once outside the timed call) and returns the timed call, which launches on
PyTorch's current stream and returns PyTorch tensors (``torch.from_dlpack``, zero-copy again).
Outputs come from CuPy's memory pool, as a CuPy user's would.

Rows skip cleanly where CuPy is not importable or there is no GPU (``pip install
elf_fast[bench]`` installs ``cupy-cuda13x``). CuPy has no bfloat16 dtype: bf16 tensors travel as
int16 bit patterns and the kernels widen them (``x << 16``) and round back to nearest-even
(NaN payloads are not preserved), as a hand-written kernel would.

Not bit-identical to elf_fast: nvcc may contract ``a * b + c`` into FMAs here (elf_fast rounds
each operation), and the SDE noise comes from ``cupy.random`` (cuRAND's default generator),
not elf_fast's Philox stream: a second kernel writes the noise to memory, which the update then
reads, as a user combining ``cupy.random`` with an ``ElementwiseKernel`` would do.
"""

from __future__ import annotations

import pytest
import torch

# bf16 <-> float for int16 bit patterns, and plain float32 loads/stores, overloaded on the storage type
_PREAMBLE = r"""
__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(short v) {
  return __uint_as_float(((unsigned int)(unsigned short)v) << 16);
}
__device__ __forceinline__ void st(float& out, float v) { out = v; }
__device__ __forceinline__ void st(short& out, float v) {
  const unsigned int u = __float_as_uint(v);
  out = (short)(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
"""

_SDE = """
float zf = ld(z), x = ld(xc);
float zn_ = zf + dt * ((x - zf) * inv);
st(zn, alpha * zn_ + scale * eps);
st(xh, x);
"""

_CFG_COND_ODE = """
float zf = ld(z), u = ld(xu);
float x = u + cfg * (ld(xc) - u);
float zn_ = zf + dt * ((x - zf) * inv);
if (mask[i / C]) { x = ld(xcond); zn_ = x; }
st(zn, zn_);
st(xh, x);
"""

_SWIGLU = """
const long long r = i / F, c = i - r * F;
const float a = ld(u[r * 2 * F + c]), b = ld(u[r * 2 * F + F + c]);
st(o, a / (1.f + expf(-a)) * b);
"""

_KERNELS: dict = {}


def cupy_or_skip(device: str):
    """The cupy module, or skip the row (CPU device, CuPy missing, or no GPU CuPy can use)."""
    if device != "cuda":
        pytest.skip("CuPy rows run on CUDA only")
    try:
        import cupy
    except ImportError as exc:  # the usual case outside a GPU image with the bench extra
        pytest.skip(f"CuPy is not importable ({exc}); pip install 'elf_fast[bench]'")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no GPU")
    except Exception as exc:  # noqa: BLE001 - CUDA runtime errors come in several types
        pytest.skip(f"CuPy cannot use the GPU: {type(exc).__name__}: {exc}")
    return cupy


def _kernel(cupy, name: str):
    if name not in _KERNELS:
        if name == "sde":
            k = cupy.ElementwiseKernel("T z, T xc, float32 eps, float32 dt, float32 inv, float32 alpha, float32 scale",
                                       "T zn, T xh", _SDE, "elf_cupy_flow_sde", preamble=_PREAMBLE)
        elif name == "cfg_cond_ode":
            k = cupy.ElementwiseKernel("T z, T xc, T xu, raw uint8 mask, T xcond, int64 C, float32 cfg, float32 dt, "
                                       "float32 inv", "T zn, T xh", _CFG_COND_ODE, "elf_cupy_flow_cfg_ode",
                                       preamble=_PREAMBLE)
        else:
            k = cupy.ElementwiseKernel("raw T u, int64 F", "T o", _SWIGLU, "elf_cupy_swiglu", preamble=_PREAMBLE)
        _KERNELS[name] = k
    return _KERNELS[name]


def _as_cupy(cupy, t: torch.Tensor):
    """Zero-copy CuPy view (bf16 as its int16 bit pattern)."""
    t = t.contiguous()
    return cupy.from_dlpack(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


def _as_torch(a, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_dlpack(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _storage_ok(*ts):
    for t in ts:
        if t.dtype not in (torch.float32, torch.bfloat16):
            pytest.skip(f"the CuPy baseline handles float32 and bfloat16, got {t.dtype}")


def _on_torch_stream(cupy, fn):
    """``fn`` run with CuPy's current stream set to PyTorch's, so both order their work alike."""
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    def call():
        with stream:
            return fn()

    return call


def flow_step_sde(cupy, z, x_c, *, t, t_next, alpha, sigma_n, t_eps, **_):
    """z_next = alpha (z + (t_next - t)(x_c - z) / max(1 - t, t_eps)) + (1 - alpha) sigma_n eps, x_hat = x_c;
    eps ~ N(0, 1) from cupy.random (not elf_fast's Philox stream)."""
    _storage_ok(z, x_c)
    zc, xc = _as_cupy(cupy, z), _as_cupy(cupy, x_c)
    kern = _kernel(cupy, "sde")
    f32 = cupy.float32
    scalars = (f32(t_next - t), f32(1.0 / max(1.0 - t, t_eps)), f32(alpha), f32((1.0 - alpha) * sigma_n))

    def fn():
        eps = cupy.random.standard_normal(zc.shape, dtype=f32)
        zn, xh = kern(zc, xc, eps, *scalars)
        return _as_torch(zn, z.dtype), _as_torch(xh, z.dtype)

    return _on_torch_stream(cupy, fn)


def flow_step_cfg_cond_ode(cupy, z, x_c, x_u, cond_mask, x_cond, *, t, t_next, cfg, t_eps=0.05):
    """CFG combine, Euler step, condition rows restored from x_cond: one ElementwiseKernel."""
    _storage_ok(z, x_c, x_u, x_cond)
    args = [_as_cupy(cupy, a) for a in (z, x_c, x_u)]
    mask = cupy.from_dlpack(cond_mask.contiguous().view(torch.uint8))  # bool as bytes
    xcond = _as_cupy(cupy, x_cond)
    kern = _kernel(cupy, "cfg_cond_ode")
    f32 = cupy.float32
    rest = (cupy.int64(z.shape[-1]), f32(cfg), f32(t_next - t), f32(1.0 / max(1.0 - t, t_eps)))

    def fn():
        zn, xh = kern(*args, mask, xcond, *rest)
        return _as_torch(zn, z.dtype), _as_torch(xh, z.dtype)

    return _on_torch_stream(cupy, fn)


def swiglu(cupy, u):
    """silu(a) * b for a, b = u.chunk(2, -1): one ElementwiseKernel over the output."""
    _storage_ok(u)
    F = u.shape[-1] // 2
    uc = _as_cupy(cupy, u)
    kern = _kernel(cupy, "swiglu")
    out_shape = (*u.shape[:-1], F)

    def fn():
        o = cupy.empty(out_shape, dtype=uc.dtype)
        kern(uc, cupy.int64(F), o)
        return _as_torch(o, u.dtype)

    return _on_torch_stream(cupy, fn)
