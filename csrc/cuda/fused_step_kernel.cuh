// CUDA kernel of the fused step and its launch decision. No torch headers and no CUDA runtime call, so nvcc
// compiles it on its own (`make check-cuda`) and the host compiler runs it on the CPU through a shim
// (tests/kernels/cuda_host); the launch itself is fused_step_launch.cuh, the torch-facing op fused_step.cu.
//
// One thread handles one work unit of E consecutive elements of one sample in a grid-stride loop: E = 4 (one Philox
// group: one Philox call per noise stream yields its four normals), or E = 8 (two groups) when every tensor of the
// call is 16-bit, so that each access is 16 bytes wide. Loads and stores are vectorised (16 bytes; 8 for half types
// in a call that also has float32 tensors) when every pointer is 16-byte aligned and the per-sample size is a
// multiple of E; otherwise (and for a sample's last, partial unit) scalar. All inputs of a group are read before any output is written,
// so an output may alias an input. Math is float32 in the eager reference's order; coefficients arrive by value
// in the kernel parameters (no device tensor, CUDA-graph capturable); seeds are read on the device.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "../fused_step.h"
#include "../philox.h"

namespace fastint {
namespace cuda {

__device__ __forceinline__ float fp16_bits_to_float_dev(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ uint16_t float_to_fp16_bits_dev(float v) { return __half_as_ushort(__float2half_rn(v)); }

struct KernelParams {
  FusedStepArgs args;
  int64_t units_per_sample;  // ceil(per_sample / E)
  int64_t stride_samples;    // the grid's size (blocks * threads, in units) = stride_samples samples + stride_units
  int64_t stride_units;
  bool vectorized;           // all pointers 16-byte aligned and per_sample % E == 0
};

__device__ __forceinline__ float load_scalar(const void* p, int32_t dtype, int64_t i) {
  switch (dtype) {
    case kFloat16:
      return fp16_bits_to_float_dev(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_scalar(void* p, int32_t dtype, int64_t i, float v) {
  switch (dtype) {
    case kFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_fp16_bits_dev(v);
      break;
    case kBFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

__device__ __forceinline__ float half_bits_to_float(int32_t dtype, uint32_t bits) {
  return dtype == kFloat16 ? fp16_bits_to_float_dev(static_cast<uint16_t>(bits))
                           : bf16_bits_to_float(static_cast<uint16_t>(bits));
}

__device__ __forceinline__ uint32_t float_to_half_bits(int32_t dtype, float v) {
  return dtype == kFloat16 ? float_to_fp16_bits_dev(v) : float_to_bf16_bits(v);
}

// E consecutive elements starting at i (i % E == 0, pointer 16-byte aligned): E = 4 is one float4 (float32) or one
// 8-byte access (a half type); E = 8 (half types only) one 16-byte access.
template <int E>
__device__ __forceinline__ void load_vec(const void* p, int32_t dtype, int64_t i, float x[E]) {
  if (E == 4 && dtype == kFloat32) {
    const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    x[0] = v.x;
    x[1] = v.y;
    x[2] = v.z;
    x[3] = v.w;
  } else if (E == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i);
    const uint32_t w[2] = {v.x, v.y};
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = half_bits_to_float(dtype, (w[j / 2] >> (16 * (j % 2))) & 0xffffu);
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p) + i);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < E; ++j) x[j] = half_bits_to_float(dtype, (w[j / 2] >> (16 * (j % 2))) & 0xffffu);
  }
}

template <int E>
__device__ __forceinline__ void store_vec(void* p, int32_t dtype, int64_t i, const float x[E]) {
  if (E == 4 && dtype == kFloat32) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(x[0], x[1], x[2], x[3]);
    return;
  }
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int j = 0; j < E / 2; ++j)
    w[j] = float_to_half_bits(dtype, x[2 * j]) | (float_to_half_bits(dtype, x[2 * j + 1]) << 16);
  if (E == 4) {
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p) + i) = make_uint2(w[0], w[1]);
  } else {
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p) + i) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

constexpr int kThreads = 256;  // threads per block

// Resident blocks per SM each variant is compiled for (__launch_bounds__; ptxas then keeps the registers within
// 65536 / (blocks * kThreads) per thread). 8 blocks = 2048 threads, full occupancy on sm_80 / sm_90 (<= 32
// registers): every 4-element variant but two outputs with 2+ noise streams, which would spill at 32 and get 6
// blocks (1536 threads, <= 40 registers). The 8-element variants hold twice the values per thread: 8 blocks for
// one output without noise, 6 for one output with one stream or two without, 5 (<= 51 registers) otherwise; each
// is the most that ptxas compiles without spilling. tests/kernels/test_cuda_static.py checks what ptxas reports.
template <int M, int K, int E>
constexpr int min_blocks_per_sm() {
  if (E == 4) return M == 2 && K >= 2 ? 6 : 8;
  if (M == 1 && K == 0) return 8;
  return (M == 1 && K == 1) || (M == 2 && K == 0) ? 6 : 5;
}

// M outputs, K noise streams and the unit E are compile-time (20 instantiations); N is a uniform runtime loop
// (<= 6):  out[m][e] = sum_n C[m, n] in[n][e] + sum_k C[m, N + k] z_k[e], z_k[4 g + j] = normals4(philox(seed,
// counter, k, g))[j].
// __grid_constant__: the parameters (coefficients included) stay in the constant bank; taking their address (the
// FusedStepArgs accessors) does not copy them to per-thread local memory.
template <int M, int K, int E>
__global__ void __launch_bounds__(kThreads, (min_blocks_per_sm<M, K, E>()))
    fused_step_kernel(const __grid_constant__ KernelParams p) {
  constexpr int G = E / 4;  // Philox groups per unit
  const FusedStepArgs& a = p.args;
  const int n_in = a.num_in;
  // Grid-stride loop over (sample b, unit u of b) without a 64-bit division per step: the stride of
  // gridDim.x * blockDim.x units is stride_samples samples plus stride_units units (the plan computes both).
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t b = gid / p.units_per_sample;
  int64_t u = gid - b * p.units_per_sample;
  for (; b < a.samples; b += p.stride_samples) {
    const int64_t e0 = E * u;
    const int64_t base = b * a.per_sample + e0;
    const int64_t rem = a.per_sample - e0;
    const int count = rem < E ? static_cast<int>(rem) : E;
    const bool vec = p.vectorized && count == E;

    float acc[M][E];
#pragma unroll
    for (int n = 0; n < kMaxInputs; ++n) {
      if (n >= n_in) break;
      float x[E];
#pragma unroll
      for (int j = 0; j < E; ++j) x[j] = 0.f;
      if (vec) {
        load_vec<E>(a.in[n], a.in_dtype[n], base, x);
      } else {
#pragma unroll
        for (int j = 0; j < E; ++j) {  // constant indices keep x[] in registers
          if (j < count) x[j] = load_scalar(a.in[n], a.in_dtype[n], base + j);
        }
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float c = a.c(m, n);
#pragma unroll
        for (int j = 0; j < E; ++j) acc[m][j] = n == 0 ? x[j] * c : acc[m][j] + x[j] * c;
      }
    }
    if (K > 0) {
      const uint64_t seed = static_cast<uint64_t>(a.seeds[b]);
      // one stream at a time (not unrolled): the Philox and Box-Muller state of one group is live once, which
      // keeps the register count within min_blocks_per_sm's budget
#pragma unroll 1
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float z[4];
          normals4(philox_group(seed, a.counter, static_cast<uint32_t>(k), static_cast<uint32_t>(G * u + h)), z);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            const float c = a.c(m, n_in + k);
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[m][4 * h + j] = acc[m][4 * h + j] + z[j] * c;
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (vec) {
        store_vec<E>(a.out[m], a.out_dtype[m], base, acc[m]);
      } else {
#pragma unroll
        for (int j = 0; j < E; ++j) {
          if (j < count) store_scalar(a.out[m], a.out_dtype[m], base + j, acc[m][j]);
        }
      }
    }
    u += p.stride_units;
    if (u >= p.units_per_sample) {
      u -= p.units_per_sample;
      ++b;
    }
  }
}

// The launch decision, a host function shared by the CUDA launcher (fused_step_launch.cuh) and the CPU harness
// that runs this kernel's source serially (tests/kernels/cuda_host): the unit E (8 when every tensor is 16-bit,
// else 4), kThreads threads per block, at most num_blocks_cap blocks (the grid-stride loop covers the rest),
// vectorised access iff every pointer is 16-byte aligned and the per-sample size is a multiple of E.
struct LaunchPlan {
  KernelParams params;
  int64_t blocks;  // 0: nothing to launch
  int threads;
  int elements_per_thread;  // E
};

inline LaunchPlan plan_fused_step_launch(const FusedStepArgs& args, int num_blocks_cap) {
  LaunchPlan plan;
  KernelParams& p = plan.params;
  p.args = args;
  bool all_half = true;
  for (int n = 0; n < args.num_in; ++n) all_half = all_half && args.in_dtype[n] != kFloat32;
  for (int m = 0; m < args.num_out; ++m) all_half = all_half && args.out_dtype[m] != kFloat32;
  const int e = all_half ? 8 : 4;
  plan.elements_per_thread = e;
  p.units_per_sample = (args.per_sample + e - 1) / e;
  const int64_t total_units = args.samples * p.units_per_sample;
  bool aligned = args.per_sample % e == 0;
  for (int n = 0; n < args.num_in; ++n) aligned = aligned && (reinterpret_cast<uintptr_t>(args.in[n]) % 16 == 0);
  for (int m = 0; m < args.num_out; ++m) aligned = aligned && (reinterpret_cast<uintptr_t>(args.out[m]) % 16 == 0);
  p.vectorized = aligned;
  plan.threads = kThreads;
  int64_t blocks = (total_units + kThreads - 1) / kThreads;
  if (blocks > num_blocks_cap) blocks = num_blocks_cap;
  plan.blocks = blocks;
  if (blocks > 0) {
    const int64_t stride = blocks * kThreads;
    p.stride_samples = stride / p.units_per_sample;
    p.stride_units = stride - p.stride_samples * p.units_per_sample;
  } else {
    p.stride_samples = p.stride_units = 0;
  }
  return plan;
}

// The M/K/E dispatch: calls launch(std::integral_constant<int, M>, std::integral_constant<int, K>,
// std::integral_constant<int, E>) for the kernel variant of this plan (M = num_out in 1..2, K = num_noise in 0..4,
// E in {4, 8}).
template <int M, int E, class Launch>
inline void dispatch_noise(int num_noise, Launch&& launch) {
  using m = std::integral_constant<int, M>;
  using e = std::integral_constant<int, E>;
  switch (num_noise) {
    case 0: launch(m(), std::integral_constant<int, 0>(), e()); break;
    case 1: launch(m(), std::integral_constant<int, 1>(), e()); break;
    case 2: launch(m(), std::integral_constant<int, 2>(), e()); break;
    case 3: launch(m(), std::integral_constant<int, 3>(), e()); break;
    default: launch(m(), std::integral_constant<int, 4>(), e()); break;
  }
}

template <class Launch>
inline void dispatch_fused_step(const LaunchPlan& plan, Launch&& launch) {
  const FusedStepArgs& args = plan.params.args;
  if (plan.elements_per_thread == 8) {
    if (args.num_out == 1) dispatch_noise<1, 8>(args.num_noise, launch);
    else dispatch_noise<2, 8>(args.num_noise, launch);
  } else {
    if (args.num_out == 1) dispatch_noise<1, 4>(args.num_noise, launch);
    else dispatch_noise<2, 4>(args.num_noise, launch);
  }
}

}  // namespace cuda
}  // namespace fastint
