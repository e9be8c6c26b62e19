// SIMT emulator: CUDA's device-side language on the CPU, so that csrc/cuda/*.cu
// compile unchanged in meaning with the host C++ compiler and run on CPU tensors
// (the module elf_fast._C_emu, ops torch.ops.elf_fast_emu.*). Included only by
// csrc/cuda/runtime.h when ELF_FAST_SIMT_EMU is defined; never by nvcc.
//
// What it models:
//  * every thread of a block is a fiber of its own; all of a block's threads run
//    concurrently (cooperatively switched on one OS thread), blocks one after another;
//  * __syncthreads() is a real barrier: the block's threads wait until all of them
//    reach it. Threads at different __syncthreads() call sites, or a barrier that
//    some threads can no longer reach (they returned), are reported as errors;
//  * warp collectives (__shfl*_sync, __ballot/__any/__all_sync, __reduce_*_sync,
//    __syncwarp) wait for every lane named in the mask; a caller outside its own
//    mask, a mask naming lanes that do not exist or have exited, and a read from a
//    lane outside the mask are errors;
//  * shared memory (EF_SHARED_ARRAY / EF_SHARED_VAR / EF_SHARED_DYNAMIC) is
//    bounds-checked, and a race detector flags a read of a word that another thread
//    wrote (or a write of a word another thread read or wrote) with no barrier in
//    between, and any read of a word not written in this block;
//  * global memory: with guarded allocation on (elf_fast.emulation.guarded_memory),
//    every CPU tensor sits flush against a PROT_NONE page, so an out-of-bounds read
//    or write past the end faults and is reported with the kernel, block and thread;
//    writes before the start are caught by canary bytes after each launch;
//  * CUDA_KERNEL_ASSERT failures, null-pointer and other faults become a Python
//    RuntimeError naming the kernel, launch site, block and thread.
//  * the warp-level tensor-core instructions mma.sync.m16n8k16 (bf16) and m16n8k8
//    (tf32), fp32 accumulate (gpu::mma_bf16_m16n8k16, gpu::mma_tf32_m16n8k8): a warp
//    collective with PTX's exact
//    fragment layout, so tile and epilogue code around it is checked; every lane
//    of the warp must take part.
//  * the device's shared-memory limit: a launch whose static + dynamic shared memory
//    exceeds the emulated device profile's opt-in maximum (sm_80, sm_86, sm_90) fails.
// What it cannot model: timing, the hardware memory model (fibers switch only at
// barriers and collectives), the real tensor-core and fast-math numerics (the mma's
// products are exact as on the GPU; their sum runs either in k order with
// round-to-nearest or, with TensorCoreNumerics, by the published bit-level model of
// aligned, truncated block accumulation, whose parameters for a given GPU are measured
// by scripts/device_check.sh, not known here; __expf, rsqrtf and FMA contraction are
// computed exactly), occupancy and register limits.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#if __has_include(<vector_types.h>) && __has_include(<cuda_bf16.h>)
// The CUDA toolkit's headers have host paths: dim3/uint3 and __nv_bfloat16/__half
// are then exactly CUDA's types.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#define ELF_FAST_SIMT_CUDA_TYPES 1
#else
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
using __nv_bfloat16 = c10::BFloat16;
using __half = c10::Half;
using cudaStream_t = void*;
#define ELF_FAST_SIMT_CUDA_TYPES 0
#endif

// ---- qualifiers (CUDA's host headers define them for host code; replaced here) ----
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#ifndef __align__
#define __align__(n) alignas(n)
#endif
// Plain __shared__ declarations cannot be bounds- or race-checked: device code
// declares shared memory with EF_SHARED_ARRAY / EF_SHARED_VAR / EF_SHARED_DYNAMIC.
#define __shared__ static_assert(false, "declare shared memory with EF_SHARED_ARRAY/EF_SHARED_VAR/EF_SHARED_DYNAMIC");

constexpr int warpSize = 32;

namespace simt {

// ---- per-thread coordinates: set by the scheduler before a fiber runs ----------
struct Coords {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
extern thread_local Coords tl_coords;

// Reports an emulation error (the launch fails with a RuntimeError carrying it).
[[noreturn]] void fail(const std::string& what);

// ---- block barrier and warp collectives (simt_emu.cpp) -------------------------
// Returns the number of threads whose predicate was non-zero.
int syncthreads(int predicate, const std::source_location& where);

enum class Collective : int { Shfl, Ballot, Sync, Reduce, Mma };
// Waits for every lane of `mask`; writes each lane's 8-byte payload to `out[lane]`.
void warp_collective(Collective kind, unsigned mask, uint64_t payload, uint64_t out[32],
                     const std::source_location& where);
// Lanes of the calling thread's warp that exist and have not exited.
unsigned active_mask();
[[noreturn]] void device_assert_failed(const char* cond, const char* file, int line);

inline unsigned lane_id() {
  const Coords& c = tl_coords;
  const unsigned linear = c.thread.x + c.block_dim.x * (c.thread.y + c.block_dim.y * c.thread.z);
  return linear % 32;
}

template <typename T>
uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp collectives move values of <= 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
T shfl_from(unsigned mask, const T& v, int src, const std::source_location& where) {
  uint64_t all[32];
  warp_collective(Collective::Shfl, mask, to_bits(v), all, where);
  if (src < 0 || src >= 32) fail("shuffle source lane " + std::to_string(src) + " is outside the warp");
  if (!((mask >> src) & 1u)) {
    fail("shuffle reads lane " + std::to_string(src) + ", which is not in its mask (undefined on a GPU)");
  }
  return from_bits<T>(all[src]);
}

// ---- tensor cores ----------------------------------------------------------------
// How an emulated mma accumulates its exact products into the fp32 accumulator
// (elf_fast.emulation.tensor_core_numerics). block == 0: in k order, one fp32
// round-to-nearest add per product (the default). block > 0: the bit-level model of
// NVIDIA's tensor cores (Fasi, Higham, Mikaitis and Pranesh 2021; Khattak and Mikaitis
// 2025): the k products are taken `block` at a time; each block's terms (its products
// and the running accumulator) are aligned to the largest one's exponent e, every term
// is truncated (toward zero) to a multiple of 2^(e - kept_bits + 1), the truncated
// terms are added exactly and the sum is rounded once to fp32, toward zero
// (round_to_nearest false) or to nearest.
struct TensorCoreNumerics {
  int block = 0;
  int kept_bits = 24;
  bool round_to_nearest = false;
};
TensorCoreNumerics tensor_core_numerics();
void set_tensor_core_numerics(const TensorCoreNumerics& n);
// acc + prods[0] + ... + prods[n - 1] under the current numerics (prods exact products).
float tc_accumulate(float acc, const float* prods, int n);

// The emulated device's limits (elf_fast.emulation.device_profile): the compute
// capability and the opt-in maximum of shared memory per block (static + dynamic,
// cudaDevAttrMaxSharedMemoryPerBlockOptin), which launches are checked against.
struct DeviceProfile {
  const char* name;
  int major, minor;
  size_t smem_optin;
};
const DeviceProfile& device_profile();
bool set_device_profile(const std::string& name);  // false: no such profile
// The static shared memory the kernel `name` touched per block at its last launch (0 before one).
size_t recorded_static_smem(const std::string& name);
// Launches per kernel name since the last reset (tests: which path a launcher took).
std::map<std::string, int64_t> launch_counts(bool reset);

inline float bf16_bits_to_float(uint32_t bits16) { return from_bits<float>(static_cast<uint64_t>(bits16 & 0xffffu) << 16); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with d as both C and D. Each lane
// hands in its fragments (layout: runtime.h, gpu::mma_bf16_m16n8k16); the warp's A (16x16)
// and B (16x8) are gathered and each lane computes its four elements of D.
inline void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                              const std::source_location& where) {
  uint64_t a01[32], a23[32], bw[32];
  warp_collective(Collective::Mma, 0xffffffffu, a[0] | (static_cast<uint64_t>(a[1]) << 32), a01, where);
  warp_collective(Collective::Mma, 0xffffffffu, a[2] | (static_cast<uint64_t>(a[3]) << 32), a23, where);
  warp_collective(Collective::Mma, 0xffffffffu, b[0] | (static_cast<uint64_t>(b[1]) << 32), bw, where);
  auto element = [](uint32_t word, int k) { return bf16_bits_to_float(k % 2 ? word >> 16 : word); };
  auto A = [&](int row, int k) {  // a[(row >= 8) + 2 (k >= 8)] of lane 4 (row % 8) + (k % 8) / 2
    const int src = (row % 8) * 4 + (k % 8) / 2;
    const uint64_t pair = k < 8 ? a01[src] : a23[src];
    return element(static_cast<uint32_t>(row < 8 ? pair : pair >> 32), k);
  };
  auto B = [&](int k, int n) {  // b[k >= 8] of lane 4 n + (k % 8) / 2
    const uint64_t pair = bw[n * 4 + (k % 8) / 2];
    return element(static_cast<uint32_t>(k < 8 ? pair : pair >> 32), k);
  };
  const int lane = static_cast<int>(lane_id()), g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float prods[16];
    for (int k = 0; k < 16; ++k) prods[k] = A(row, k) * B(k, col);  // exact: 8 x 8 significant bits
    d[r] = tc_accumulate(d[r], prods, 16);
  }
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with d as both C and D: one 32-bit
// element per register (layout: runtime.h, gpu::mma_tf32_m16n8k8); the hardware reads a
// register as TF32, i.e. its top 19 bits, and so does this.
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                             const std::source_location& where) {
  uint64_t a01[32], a23[32], bw[32];
  warp_collective(Collective::Mma, 0xffffffffu, a[0] | (static_cast<uint64_t>(a[1]) << 32), a01, where);
  warp_collective(Collective::Mma, 0xffffffffu, a[2] | (static_cast<uint64_t>(a[3]) << 32), a23, where);
  warp_collective(Collective::Mma, 0xffffffffu, b[0] | (static_cast<uint64_t>(b[1]) << 32), bw, where);
  auto tf32 = [](uint64_t word) { return from_bits<float>(word & 0xffffe000u); };
  auto A = [&](int row, int k) {  // a[(row >= 8) + 2 (k >= 4)] of lane 4 (row % 8) + k % 4
    const int src = (row % 8) * 4 + k % 4;
    const uint64_t pair = k < 4 ? a01[src] : a23[src];
    return tf32(row < 8 ? pair : pair >> 32);
  };
  auto B = [&](int k, int n) {  // b[k >= 4] of lane 4 n + k % 4
    const uint64_t pair = bw[n * 4 + k % 4];
    return tf32(k < 4 ? pair : pair >> 32);
  };
  const int lane = static_cast<int>(lane_id()), g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float prods[8];
    for (int k = 0; k < 8; ++k) prods[k] = A(row, k) * B(k, col);  // exact: 11 x 11 significant bits
    d[r] = tc_accumulate(d[r], prods, 8);
  }
}

// ---- shared memory -----------------------------------------------------------------
// Race/initialisation shadow of a shared-memory region, one entry per byte.
class SharedRegion {
 public:
  SharedRegion(const char* name, size_t bytes);
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  void resize(size_t bytes);  // dynamic shared memory: the launch's size
  unsigned char* data() { return data_; }
  size_t bytes() const { return bytes_; }
  const char* name() const { return name_; }
  enum class Access { Read, Write, Atomic };
  // Race and initialisation checks of an access to bytes [offset, offset + n).
  void on_access(size_t offset, size_t n, Access kind);
  // Fails unless bytes [byte, byte + n) lie inside the region.
  void check_bounds(int64_t byte, size_t n) const;

 private:
  struct Entry;
  const char* name_;
  uint32_t launch_ = 0;  // the last launch that touched it (the launch's static shared memory)
  size_t bytes_ = 0;
  unsigned char* data_ = nullptr;
  Entry* shadow_ = nullptr;
};

template <typename T>
class SharedPtr;

// A checked reference to one element of shared memory.
template <typename T>
class SharedRef {
 public:
  SharedRef(SharedRegion* r, size_t offset) : r_(r), off_(offset) {}
  SharedRef(const SharedRef&) = default;
  operator T() const {
    r_->on_access(off_, sizeof(T), SharedRegion::Access::Read);
    T v;
    std::memcpy(&v, r_->data() + off_, sizeof(T));
    return v;
  }
  SharedRef& operator=(const T& v) {
    r_->on_access(off_, sizeof(T), SharedRegion::Access::Write);
    std::memcpy(r_->data() + off_, &v, sizeof(T));
    return *this;
  }
  SharedRef& operator=(const SharedRef& o) { return *this = static_cast<T>(o); }
  template <typename U>
  SharedRef& operator+=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) + v); }
  template <typename U>
  SharedRef& operator-=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) - v); }
  template <typename U>
  SharedRef& operator*=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) * v); }
  template <typename U>
  SharedRef& operator/=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) / v); }
  SharedPtr<T> operator&() const { return SharedPtr<T>(r_, static_cast<int64_t>(off_)); }

 private:
  SharedRegion* r_;
  size_t off_;
};

// A checked pointer into shared memory (pointer arithmetic, indexing, deref).
template <typename T>
class SharedPtr {
 public:
  SharedPtr() = default;
  SharedPtr(SharedRegion* r, int64_t byte_offset) : r_(r), off_(byte_offset) {}
  SharedRef<T> operator[](int64_t i) const {
    const int64_t byte = off_ + i * static_cast<int64_t>(sizeof(T));
    r_->check_bounds(byte, sizeof(T));
    return SharedRef<T>(r_, static_cast<size_t>(byte));
  }
  SharedRef<T> operator*() const { return (*this)[0]; }
  SharedPtr operator+(int64_t i) const { return SharedPtr(r_, off_ + i * static_cast<int64_t>(sizeof(T))); }
  SharedPtr operator-(int64_t i) const { return SharedPtr(r_, off_ - i * static_cast<int64_t>(sizeof(T))); }
  SharedPtr& operator+=(int64_t i) { return *this = *this + i; }
  SharedPtr& operator-=(int64_t i) { return *this = *this - i; }
  int64_t operator-(const SharedPtr& o) const { return (off_ - o.off_) / static_cast<int64_t>(sizeof(T)); }
  bool operator==(const SharedPtr& o) const { return r_ == o.r_ && off_ == o.off_; }
  // The element's storage for an atomic operation (bounds-checked; atomics do not race each other).
  T* atomic_address() const {
    r_->check_bounds(off_, sizeof(T));
    r_->on_access(static_cast<size_t>(off_), sizeof(T), SharedRegion::Access::Atomic);
    return reinterpret_cast<T*>(r_->data() + off_);
  }
  // A view of the same bytes as another element type (as reinterpret_cast of a shared pointer).
  template <typename U>
  SharedPtr<U> as() const { return SharedPtr<U>(r_, off_); }

 private:
  SharedRegion* r_ = nullptr;
  int64_t off_ = 0;
};

// Statically sized shared memory of N elements of T (one per block: the scheduler
// runs a block's fibers on one OS thread, so a thread_local static is the block's).
template <typename T, size_t N>
class SharedArray {
 public:
  explicit SharedArray(const char* name) : region_(name, sizeof(T) * N) {}
  SharedRef<T> operator[](int64_t i) { return ptr()[i]; }
  SharedPtr<T> ptr() { return SharedPtr<T>(&region_, 0); }
  operator SharedPtr<T>() { return ptr(); }
  SharedPtr<T> operator+(int64_t i) { return ptr() + i; }

 private:
  SharedRegion region_;
};

// Two-dimensional [N][M] shared array.
template <typename T, size_t N, size_t M>
class SharedArray2 {
 public:
  explicit SharedArray2(const char* name) : region_(name, sizeof(T) * N * M) {}
  SharedPtr<T> operator[](int64_t i) {
    if (i < 0 || static_cast<size_t>(i) >= N) region_.check_bounds(i * static_cast<int64_t>(M * sizeof(T)), M * sizeof(T));
    return SharedPtr<T>(&region_, i * static_cast<int64_t>(M * sizeof(T)));
  }

 private:
  SharedRegion region_;
};

// The launch's dynamic shared memory (its size is the launch's `smem` argument).
SharedRegion* dynamic_shared_region();
template <typename T>
SharedPtr<T> dynamic_shared() {
  return SharedPtr<T>(dynamic_shared_region(), 0);
}

// ---- launches --------------------------------------------------------------------
struct LaunchSite {
  const char* kernel;  // pretty name of the kernel
  std::source_location where;
};
using BlockBody = void (*)(void* closure);
// Runs body(closure) for every thread of every block of the grid.
void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t dynamic_smem, BlockBody body, void* closure);

// The kernel's name out of a __PRETTY_FUNCTION__ "... [with auto K = name; ...]".
std::string kernel_name_from(const char* pretty);

}  // namespace simt

// ---- the CUDA built-ins ------------------------------------------------------------
#define threadIdx (::simt::tl_coords.thread)
#define blockIdx (::simt::tl_coords.block)
#define blockDim (::simt::tl_coords.block_dim)
#define gridDim (::simt::tl_coords.grid_dim)

inline void __syncthreads(std::source_location w = std::source_location::current()) { simt::syncthreads(0, w); }
inline int __syncthreads_count(int p, std::source_location w = std::source_location::current()) {
  return simt::syncthreads(p != 0, w);
}
inline int __syncthreads_and(int p, std::source_location w = std::source_location::current()) {
  return simt::syncthreads(p != 0, w) == static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int p, std::source_location w = std::source_location::current()) {
  return simt::syncthreads(p != 0, w) > 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location w = std::source_location::current()) {
  uint64_t all[32];
  simt::warp_collective(simt::Collective::Sync, mask, 0, all, w);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, std::source_location w = std::source_location::current()) {
  const int lane = static_cast<int>(simt::lane_id());
  const int base = lane - lane % width;
  return simt::shfl_from(mask, v, base + ((src % width) + width) % width, w);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  std::source_location w = std::source_location::current()) {
  const int lane = static_cast<int>(simt::lane_id());
  int src = lane ^ lane_mask;
  if (src / width != lane / width) src = lane;  // outside the segment: own value
  return simt::shfl_from(mask, v, src, w);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   std::source_location w = std::source_location::current()) {
  const int lane = static_cast<int>(simt::lane_id());
  const int src = (lane % width) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return simt::shfl_from(mask, v, src, w);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 std::source_location w = std::source_location::current()) {
  const int lane = static_cast<int>(simt::lane_id());
  const int src = (lane % width) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return simt::shfl_from(mask, v, src, w);
}
inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
  uint64_t all[32];
  simt::warp_collective(simt::Collective::Ballot, mask, pred != 0, all, w);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) && all[l]) out |= 1u << l;
  }
  return out;
}
inline int __any_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
  return __ballot_sync(mask, pred, w) != 0;
}
inline int __all_sync(unsigned mask, int pred, std::source_location w = std::source_location::current()) {
  return __ballot_sync(mask, pred, w) == mask;
}
inline unsigned __activemask() { return simt::active_mask(); }

#define EF_SIMT_REDUCE(NAME, T, OP)                                                                    \
  inline T NAME(unsigned mask, T v, std::source_location w = std::source_location::current()) {        \
    uint64_t all[32];                                                                                  \
    simt::warp_collective(simt::Collective::Reduce, mask, simt::to_bits(v), all, w);                    \
    bool first = true;                                                                                 \
    T acc{};                                                                                           \
    for (int l = 0; l < 32; ++l) {                                                                     \
      if (!((mask >> l) & 1u)) continue;                                                               \
      const T x = simt::from_bits<T>(all[l]);                                                          \
      acc = first ? x : OP;                                                                            \
      first = false;                                                                                   \
    }                                                                                                  \
    return acc;                                                                                        \
  }
EF_SIMT_REDUCE(__reduce_add_sync, unsigned, acc + x)
EF_SIMT_REDUCE(__reduce_add_sync, int, acc + x)
EF_SIMT_REDUCE(__reduce_max_sync, unsigned, (x > acc ? x : acc))
EF_SIMT_REDUCE(__reduce_max_sync, int, (x > acc ? x : acc))
EF_SIMT_REDUCE(__reduce_min_sync, unsigned, (x < acc ? x : acc))
EF_SIMT_REDUCE(__reduce_min_sync, int, (x < acc ? x : acc))
EF_SIMT_REDUCE(__reduce_and_sync, unsigned, acc & x)
EF_SIMT_REDUCE(__reduce_or_sync, unsigned, acc | x)
EF_SIMT_REDUCE(__reduce_xor_sync, unsigned, acc ^ x)
#undef EF_SIMT_REDUCE

// ---- atomics (blocks run one at a time and fibers switch only at barriers and
// collectives, so a read-modify-write is atomic). On shared memory they are
// bounds-checked and exempt from the race detector among themselves. --------------------
namespace simt {
template <typename P>
struct Pointee {
  using type = std::remove_cv_t<std::remove_pointer_t<P>>;
  static type* address(P p) { return const_cast<type*>(p); }
};
template <typename T>
struct Pointee<SharedPtr<T>> {
  using type = T;
  static T* address(SharedPtr<T> p) { return p.atomic_address(); }
};
template <typename P>
using pointee_t = typename Pointee<P>::type;
}  // namespace simt

#define EF_SIMT_ATOMIC(NAME, NEW)                                         \
  template <typename P>                                                   \
  simt::pointee_t<P> NAME(P p, simt::pointee_t<P> v) {                    \
    using T = simt::pointee_t<P>;                                         \
    T* a = simt::Pointee<P>::address(p);                                  \
    const T old = *a;                                                     \
    *a = static_cast<T>(NEW);                                             \
    return old;                                                           \
  }
EF_SIMT_ATOMIC(atomicAdd, old + v)
EF_SIMT_ATOMIC(atomicSub, old - v)
EF_SIMT_ATOMIC(atomicMax, v > old ? v : old)
EF_SIMT_ATOMIC(atomicMin, v < old ? v : old)
EF_SIMT_ATOMIC(atomicExch, v)
EF_SIMT_ATOMIC(atomicOr, old | v)
EF_SIMT_ATOMIC(atomicAnd, old & v)
EF_SIMT_ATOMIC(atomicXor, old ^ v)
#undef EF_SIMT_ATOMIC
template <typename P>
simt::pointee_t<P> atomicCAS(P p, simt::pointee_t<P> compare, simt::pointee_t<P> v) {
  auto* a = simt::Pointee<P>::address(p);
  const auto old = *a;
  if (old == compare) *a = v;
  return old;
}

// ---- arithmetic intrinsics: IEEE round-to-nearest results (what the GPU's _rn
// forms give); the fast-math forms (__expf, __logf, rsqrtf, ...) are computed
// exactly here, which a GPU does not. Compiled with -ffp-contract=off. -----------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __expf(float a) { return std::exp(a); }
inline float __exp10f(float a) { return std::pow(10.0f, a); }
inline float __logf(float a) { return std::log(a); }
inline float __log2f(float a) { return std::log2(a); }
inline float __sinf(float a) { return std::sin(a); }
inline float __cosf(float a) { return std::cos(a); }
inline float __tanf(float a) { return std::tan(a); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : (a == a ? a : 0.f)); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline int __float2int_rn(float a) { return static_cast<int>(std::nearbyint(a)); }
inline int __float2int_rz(float a) { return static_cast<int>(a); }
inline int __float_as_int(float a) { return simt::from_bits<int>(simt::to_bits(a)); }
inline unsigned __float_as_uint(float a) { return simt::from_bits<unsigned>(simt::to_bits(a)); }
inline float __int_as_float(int a) { return simt::from_bits<float>(simt::to_bits(a)); }
inline float __uint_as_float(unsigned a) { return simt::from_bits<float>(simt::to_bits(a)); }
inline long long __double_as_longlong(double a) { return simt::from_bits<long long>(simt::to_bits(a)); }
inline double __longlong_as_double(long long a) { return simt::from_bits<double>(simt::to_bits(a)); }
inline int __clz(unsigned a) { return a ? __builtin_clz(a) : 32; }
inline int __clzll(unsigned long long a) { return a ? __builtin_clzll(a) : 64; }
inline int __popc(unsigned a) { return __builtin_popcount(a); }
inline int __popcll(unsigned long long a) { return __builtin_popcountll(a); }
inline int __ffs(unsigned a) { return __builtin_ffs(static_cast<int>(a)); }
inline int __ffsll(unsigned long long a) { return __builtin_ffsll(static_cast<long long>(a)); }
inline unsigned __brev(unsigned a) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((a >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;

// The device-side assert: in CUDA a trap that poisons the context; here an error
// naming the failed condition, kernel, block and thread.
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::simt::device_assert_failed(#cond, __FILE__, __LINE__))

// ---- shared-memory declarations (see csrc/cuda/runtime.h for the nvcc forms) ---------
#define EF_SHARED_ARRAY(T, name, N) static thread_local ::simt::SharedArray<T, (N)> name(#name)
#define EF_SHARED_ARRAY2(T, name, N, M) static thread_local ::simt::SharedArray2<T, (N), (M)> name(#name)
#define EF_SHARED_VAR(T, name)                                                \
  static thread_local ::simt::SharedArray<T, 1> name##_ef_storage(#name); \
  ::simt::SharedRef<T> name = name##_ef_storage[0]
#define EF_SHARED_DYNAMIC(T, name) ::simt::SharedPtr<T> name = ::simt::dynamic_shared<T>()
