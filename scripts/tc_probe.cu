// Known-answer probes of a GPU's tensor-core accumulation (scripts/tc_probe.py writes the
// problems, runs this, and fits the results to elf_fast.emulation.mma_model). Standalone: no
// torch, built by tc_probe.py with `nvcc -arch=sm_XX -o tc_probe tc_probe.cu`.
//   tc_probe IN OUT: IN = int32 variant (0: bf16 m16n8k16, 1: tf32 m16n8k8), int32 count, then
//   count problems of fp32 A (16 x K), B (K x 8), C (16 x 8), row-major; OUT = count x 128 fp32 D.
// One warp per problem, D = C + A B through one mma.sync with PTX's fragment layouts (the same
// layout as csrc/cuda/runtime.h; the emulated twin is mma_probe_kernel in
// csrc/emu/selftest_kernels.cpp).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                         \
  do {                                                                                   \
    cudaError_t e = (x);                                                                 \
    if (e != cudaSuccess) {                                                              \
      std::fprintf(stderr, "tc_probe: %s: %s\n", #x, cudaGetErrorString(e));             \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

__global__ void probe(const float* x, float* out, int variant) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const int K = variant == 0 ? 16 : 8, stride = 16 * K + K * 8 + 128;
  const float* A = x + static_cast<int64_t>(blockIdx.x) * stride;
  const float* B = A + 16 * K;
  const float* C = B + K * 8;
  float* D = out + static_cast<int64_t>(blockIdx.x) * 128;
  float d0 = C[g * 8 + 2 * t], d1 = C[g * 8 + 2 * t + 1], d2 = C[(g + 8) * 8 + 2 * t], d3 = C[(g + 8) * 8 + 2 * t + 1];
  if (variant == 0) {
    auto bits = [](float f) { return __float_as_uint(f) >> 16; };  // exact for bf16 values
    auto pack = [&](float lo, float hi) { return bits(lo) | (bits(hi) << 16); };
    const uint32_t a0 = pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    const uint32_t a1 = pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    const uint32_t a2 = pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    const uint32_t a3 = pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    const uint32_t b0 = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    const uint32_t b1 = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    const uint32_t a0 = __float_as_uint(A[g * 8 + t]), a1 = __float_as_uint(A[(g + 8) * 8 + t]);
    const uint32_t a2 = __float_as_uint(A[g * 8 + t + 4]), a3 = __float_as_uint(A[(g + 8) * 8 + t + 4]);
    const uint32_t b0 = __float_as_uint(B[t * 8 + g]), b1 = __float_as_uint(B[(t + 4) * 8 + g]);
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  D[g * 8 + 2 * t] = d0;
  D[g * 8 + 2 * t + 1] = d1;
  D[(g + 8) * 8 + 2 * t] = d2;
  D[(g + 8) * 8 + 2 * t + 1] = d3;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: tc_probe IN OUT\n");
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 2;
  int32_t head[2];
  if (std::fread(head, sizeof(int32_t), 2, f) != 2) return 2;
  const int variant = head[0], count = head[1];
  const int K = variant == 0 ? 16 : 8;
  const size_t per = 16 * K + K * 8 + 128;
  std::vector<float> x(per * count), d(128 * static_cast<size_t>(count));
  if (std::fread(x.data(), sizeof(float), x.size(), f) != x.size()) return 2;
  std::fclose(f);
  float *dx, *dd;
  CHECK(cudaMalloc(&dx, x.size() * sizeof(float)));
  CHECK(cudaMalloc(&dd, d.size() * sizeof(float)));
  CHECK(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
  probe<<<count, 32>>>(dx, dd, variant);
  CHECK(cudaGetLastError());
  CHECK(cudaMemcpy(d.data(), dd, d.size() * sizeof(float), cudaMemcpyDeviceToHost));
  FILE* o = std::fopen(argv[2], "wb");
  if (!o || std::fwrite(d.data(), sizeof(float), d.size(), o) != d.size()) return 2;
  std::fclose(o);
  return 0;
}
