// EF_HD: a function compiled for the host and, under nvcc, for the device too (inlined), so
// the arithmetic written once in philox.h, flow_step_math.h and split_gemm.h serves the CPU
// kernels, the CUDA kernels and their emulation build.
#pragma once

#if defined(__CUDACC__)
#define EF_HD __host__ __device__ __forceinline__
#else
#define EF_HD inline
#endif
