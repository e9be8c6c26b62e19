// What every csrc/cuda/*.cu includes. The same kernel sources build two ways:
//  * nvcc (elf_fast._C, ops torch.ops.elf_fast.* on CUDA tensors): the CUDA runtime
//    and ATen's CUDA stream/guard helpers;
//  * the host C++ compiler with ELF_FAST_SIMT_EMU (elf_fast._C_emu, ops
//    torch.ops.elf_fast_emu.* on CPU tensors): the SIMT emulator (simt_emu.h), whose
//    ATen calls (GEMMs, allocation) run on the CPU.
// Host code in a .cu uses only what this header names, so the launch configuration,
// guards and checks are the very same code in both builds:
//   gpu::launch<kernel>({grid, block, smem_bytes, stream}, args...)
//   gpu::current_stream(), gpu::sm_count(), gpu::DeviceGuard, gpu::check_on_device(op, t, name),
//   gpu::smem_fits<kernel>(t, dynamic_bytes)   (static + dynamic within t's device's opt-in limit)
//   ELF_FAST_GPU_IMPL(m) { m.impl(...); }     (TORCH_LIBRARY_IMPL for the right key)
// and device code declares shared memory with
//   EF_SHARED_ARRAY(T, name, N);  EF_SHARED_ARRAY2(T, name, N, M);  EF_SHARED_VAR(T, name);
//   EF_SHARED_DYNAMIC(T, name);   (a pointer-like `name`: index it, add to it, use auto)
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstddef>
#include <source_location>
#include <tuple>
#include <utility>

#include "elf_fast.h"

#if defined(ELF_FAST_SIMT_EMU)
#include "simt_emu.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#define EF_SHARED_ARRAY(T, name, N) __shared__ T name[N]
#define EF_SHARED_ARRAY2(T, name, N, M) __shared__ T name[N][M]
#define EF_SHARED_VAR(T, name) __shared__ T name
#define EF_SHARED_DYNAMIC(T, name)                      \
  extern __shared__ __align__(16) unsigned char ef_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(ef_dynamic_smem_)
#endif

namespace elf_fast {
namespace gpu {

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t smem = 0;  // dynamic shared memory, bytes
  cudaStream_t stream = nullptr;
  std::source_location where = std::source_location::current();  // the call site
};

#if defined(ELF_FAST_SIMT_EMU)

// Emulated device: CPU tensors; few "SMs", so grid-stride loops go round more than once.
constexpr int kEmulatedSMs = 2;
constexpr const char* kDeviceName = "emulated CUDA device (CPU tensors, elf_fast._C_emu)";
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
inline cudaStream_t current_stream() { return nullptr; }
inline int sm_count() { return kEmulatedSMs; }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

template <typename... P, typename... A>
void launch_as(const char* name, void (*kernel)(P...), const LaunchConfig& c, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "gpu::launch: wrong number of kernel arguments");
  std::tuple<P...> params{static_cast<P>(std::forward<A>(args))...};
  struct Closure {
    void (*kernel)(P...);
    std::tuple<P...>* params;
  } closure{kernel, &params};
  // Each thread gets its own copy of the parameters, as on a GPU.
  auto body = [](void* p) {
    auto* cl = static_cast<Closure*>(p);
    std::tuple<P...> mine = *cl->params;
    std::apply(cl->kernel, mine);
  };
  simt::run_grid(simt::LaunchSite{name, c.where}, c.grid, c.block, c.smem, body, &closure);
}

template <auto K, typename... A>
void launch(const LaunchConfig& c, A&&... args) {
  static const std::string name = simt::kernel_name_from(__PRETTY_FUNCTION__);
  launch_as(name.c_str(), K, c, std::forward<A>(args)...);
}

#define ELF_FAST_GPU_IMPL(m) TORCH_LIBRARY_IMPL(elf_fast_emu, CPU, m)

#else  // nvcc

constexpr const char* kDeviceName = "CUDA device";
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
using DeviceGuard = c10::cuda::CUDAGuard;

template <typename... P, typename... A>
void launch_as(void (*kernel)(P...), const LaunchConfig& c, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "gpu::launch: wrong number of kernel arguments");
  std::tuple<P...> params{static_cast<P>(std::forward<A>(args))...};
  void* ptrs[sizeof...(P) + 1];
  size_t i = 0;
  std::apply([&](auto&... p) { ((ptrs[i++] = static_cast<void*>(&p)), ...); }, params);
  C10_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), c.grid, c.block, ptrs, c.smem, c.stream));
}

template <auto K, typename... A>
void launch(const LaunchConfig& c, A&&... args) {
  launch_as(K, c, std::forward<A>(args)...);
}

#define ELF_FAST_GPU_IMPL(m) TORCH_LIBRARY_IMPL(elf_fast, CUDA, m)

#endif

// ---- tensor cores: one warp-wide mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32,
// d = A B + d with A 16x16 (row-major) and B 16x8 (column-major) in bf16, d fp32.
// Fragments (PTX ISA), g = lane / 4, t = lane % 4, two bf16 per 32-bit word, the lower k
// in the low half:
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   d[0], d[1] = D[g][2t], D[g][2t+1]                 d[2], d[3] = D[g+8][2t], D[g+8][2t+1]
// Needs sm_80 or newer (the launchers check); every lane of the warp must execute it.
#if defined(ELF_FAST_SIMT_EMU)
inline void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                              std::source_location where = std::source_location::current()) {
  simt::mma_bf16_m16n8k16(d, a, b, where);
}
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                             std::source_location where = std::source_location::current()) {
  simt::mma_tf32_m16n8k8(d, a, b, where);
}
// Raise a kernel's dynamic shared-memory limit (nothing to do under the emulator).
template <auto K>
void allow_dynamic_smem(size_t) {}
// Whether the emulated device profile (elf_fast.emulation.device_profile) runs bf16 and TF32 mma.
inline bool tensor_cores_bf16(const at::Tensor&) { return simt::device_profile().major >= 8; }
// The opt-in maximum of shared memory per block (static + dynamic) of the emulated device profile.
inline size_t max_shared_memory_per_block(const at::Tensor&) { return simt::device_profile().smem_optin; }
// K's static shared memory per block: what its last emulated launch touched (0 before one;
// kernels whose launchers size shared memory keep it all dynamic).
template <auto K>
size_t static_smem_bytes() {
  static const std::string name = simt::kernel_name_from(__PRETTY_FUNCTION__);
  return simt::recorded_static_smem(name);
}
// A dynamic shared-memory pointer viewed as another element type (reinterpret_cast under nvcc).
template <typename U, typename T>
simt::SharedPtr<U> shared_as(simt::SharedPtr<T> p) {
  return p.template as<U>();
}
#else
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // launchers never select a tensor-core kernel below sm_80
#endif
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: A 16x8, B 8x8, one fp32 bit pattern per
// register, read as TF32 (pass values already rounded to TF32). g = lane / 4, t = lane % 4:
//   a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]   b[0] = B[t][g]  b[1] = B[t+4][g]
//   d as for mma_bf16_m16n8k16.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // launchers never select a tensor-core kernel below sm_80
#endif
}
template <auto K>
void allow_dynamic_smem(size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(K), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}
// Whether t's device runs bf16 and TF32 mma.sync (compute capability 8.0 or newer).
inline bool tensor_cores_bf16(const at::Tensor& t) {
  return at::cuda::getDeviceProperties(t.get_device())->major >= 8;
}
// The opt-in maximum of shared memory per block (static + dynamic) on t's device: 227 KiB on
// sm_90, 163 KiB on sm_80, 99 KiB on sm_86/89.
inline size_t max_shared_memory_per_block(const at::Tensor& t) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, t.get_device()));
  return static_cast<size_t>(v);
}
// K's static shared memory per block, as compiled for the current device.
template <auto K>
size_t static_smem_bytes() {
  cudaFuncAttributes a{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(K)));
  return a.sharedSizeBytes;
}
template <typename U, typename T>
__device__ __forceinline__ U* shared_as(T* p) {
  return reinterpret_cast<U*>(p);
}
#endif

// Whether K fits t's device with `dynamic` bytes of dynamic shared memory per block: static +
// dynamic within the device's opt-in maximum. Launchers with a fallback check it first (a
// launch over the limit fails on the GPU; cudaFuncSetAttribute refuses the size).
template <auto K>
bool smem_fits(const at::Tensor& t, size_t dynamic) {
  return static_smem_bytes<K>() + dynamic <= max_shared_memory_per_block(t);
}

// The launchers' device check: `t` must be on this build's device.
inline void check_on_device(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(on_device(t), "elf_fast.", op, " (CUDA kernel): '", name, "' must be on a ", kDeviceName, ", got ",
              t.device());
}

}  // namespace gpu
}  // namespace elf_fast
