// The CUDA language and runtime as far as csrc/cuda/fused_step_kernel.cuh uses them, for the host compiler: lets the
// kernel's own source run on the CPU, one thread at a time (cuda_host_harness.cpp). Device semantics emulated:
//   * qualifiers (__global__, __device__, __host__, __forceinline__, __launch_bounds__, __grid_constant__) vanish;
//   * blockIdx / threadIdx / blockDim / gridDim are thread-local globals the harness sets before each "thread";
//   * __CUDA_ARCH__ is defined (900), so the device branches of csrc/philox.h run (__umulhi, the exact reduction
//     of theta / pi in double and sincospif);
//   * __half conversions round to nearest even, bit for bit as __float2half_rn / __half2float (through GCC's
//     _Float16, an implementation independent of the kernel's own fp16 helpers in csrc/fused_step.h);
//   * float4 / uint4 / uint2 carry CUDA's alignment (16 / 16 / 8 bytes), so a vector access through a misaligned pointer is
//     undefined behaviour that -fsanitize=alignment turns into an abort, as the GPU would fault;
//   * __umulhi is exact; logf, sqrtf and rint are the host libm's, sincospif(x) is sin/cos(pi x) in double rounded
//     to float (sqrtf and rint are exact on both; CUDA's logf and sincospif are within 1 ulp, so a device result
//     may differ from the harness by that);
//   * nvcc contracts a * b + c into an FMA by default, the harness (-ffp-contract=off) rounds twice: at most one
//     float32 rounding per operation apart, inside the parity tests' 2e-6 relative bound.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#define __CUDACC__ 1
#define __CUDA_ARCH__ 900

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

struct alignas(16) float4 {
  float x, y, z, w;
};

struct alignas(8) uint2 {
  unsigned x, y;
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

inline void sincospif(float x, float* s, float* c) {
  const double a = 3.14159265358979323846 * static_cast<double>(x);
  *s = static_cast<float>(sin(a));
  *c = static_cast<float>(cos(a));
}

struct alignas(2) __half {
  unsigned short x;
};

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }

inline float __half2float(__half h) {
  _Float16 v;
  memcpy(&v, &h.x, sizeof(v));
  return static_cast<float>(v);
}

inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);  // IEEE round to nearest even
  __half h;
  memcpy(&h.x, &v, sizeof(h.x));
  return h;
}

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * static_cast<uint64_t>(b)) >> 32);
}

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
