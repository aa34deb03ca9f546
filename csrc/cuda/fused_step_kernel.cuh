// CUDA kernel of the fused step and its launch decision. No torch headers and no CUDA runtime call, so nvcc
// compiles it on its own (`make check-cuda`) and the host compiler runs it on the CPU through a shim
// (tests/kernels/cuda_host); the launch itself is fused_step_launch.cuh, the torch-facing op fused_step.cu.
//
// One thread handles one Philox group (4 consecutive elements of one sample, one Philox call per noise stream
// yielding the group's four normals) in a grid-stride loop. Loads and stores are vectorised (16 bytes for float32,
// 8 for half types) when every pointer is 16-byte aligned and the per-sample size is a multiple of 4; otherwise
// (and for a sample's last, partial group) scalar. All inputs of a group are read before any output is written,
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
  int64_t groups_per_sample;
  int64_t stride_samples;  // the grid's size (blocks * threads, in groups) = stride_samples samples + stride_groups
  int64_t stride_groups;
  bool vectorized;  // all pointers 16-byte aligned and per_sample % 4 == 0
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

// Four consecutive elements starting at i (i % 4 == 0, pointer 16-byte aligned): one 16- or 8-byte load.
__device__ __forceinline__ void load4(const void* p, int32_t dtype, int64_t i, float x[4]) {
  if (dtype == kFloat32) {
    const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    x[0] = v.x;
    x[1] = v.y;
    x[2] = v.z;
    x[3] = v.w;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i);
    const uint16_t h[4] = {static_cast<uint16_t>(v.x & 0xffffu), static_cast<uint16_t>(v.x >> 16),
                           static_cast<uint16_t>(v.y & 0xffffu), static_cast<uint16_t>(v.y >> 16)};
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = dtype == kFloat16 ? fp16_bits_to_float_dev(h[j]) : bf16_bits_to_float(h[j]);
  }
}

__device__ __forceinline__ void store4(void* p, int32_t dtype, int64_t i, const float x[4]) {
  if (dtype == kFloat32) {
    *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(x[0], x[1], x[2], x[3]);
  } else {
    uint16_t h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = dtype == kFloat16 ? float_to_fp16_bits_dev(x[j]) : float_to_bf16_bits(x[j]);
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p) + i) =
        make_uint2(static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16),
                   static_cast<uint32_t>(h[2]) | (static_cast<uint32_t>(h[3]) << 16));
  }
}

constexpr int kThreads = 256;  // threads per block

// Resident blocks per SM each variant is compiled for (__launch_bounds__; ptxas then keeps the registers within
// 65536 / (blocks * kThreads) per thread). 8 blocks = 2048 threads, full occupancy on sm_80 / sm_90 (<= 32
// registers): every variant but two outputs with 2+ noise streams, which would spill at 32 and get 6 blocks
// (1536 threads, <= 40 registers). tests/kernels/test_cuda_static.py checks what ptxas reports.
template <int M, int K>
constexpr int min_blocks_per_sm() {
  return M == 2 && K >= 2 ? 6 : 8;
}

// M outputs and K noise streams are compile-time (10 instantiations); N is a uniform runtime loop (<= 6).
// __grid_constant__: the parameters (coefficients included) stay in the constant bank; taking their address (the
// FusedStepArgs accessors) does not copy them to per-thread local memory.
template <int M, int K>
__global__ void __launch_bounds__(kThreads, (min_blocks_per_sm<M, K>()))
    fused_step_kernel(const __grid_constant__ KernelParams p) {
  const FusedStepArgs& a = p.args;
  const int n_in = a.num_in;
  // Grid-stride loop over (sample b, group g of b) without a 64-bit division per step: the stride of
  // gridDim.x * blockDim.x groups is stride_samples samples plus stride_groups groups (the plan computes both).
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t b = gid / p.groups_per_sample;
  int64_t g = gid - b * p.groups_per_sample;
  for (; b < a.samples; b += p.stride_samples) {
    const int64_t e0 = 4 * g;
    const int64_t base = b * a.per_sample + e0;
    const int64_t rem = a.per_sample - e0;
    const int count = rem < 4 ? static_cast<int>(rem) : 4;
    const bool vec = p.vectorized && count == 4;

    float acc[M][4];
#pragma unroll
    for (int n = 0; n < kMaxInputs; ++n) {
      if (n >= n_in) break;
      float x[4] = {0.f, 0.f, 0.f, 0.f};
      if (vec) {
        load4(a.in[n], a.in_dtype[n], base, x);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // constant indices keep x[] in registers
          if (j < count) x[j] = load_scalar(a.in[n], a.in_dtype[n], base + j);
        }
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float c = a.c(m, n);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[m][j] = n == 0 ? x[j] * c : acc[m][j] + x[j] * c;
      }
    }
    if (K > 0) {
      const uint64_t seed = static_cast<uint64_t>(a.seeds[b]);
      // one stream at a time (not unrolled): the Philox and Box-Muller state of one group is live once, which
      // keeps the register count within min_blocks_per_sm's budget
#pragma unroll 1
      for (int k = 0; k < K; ++k) {
        float z[4];
        normals4(philox_group(seed, a.counter, static_cast<uint32_t>(k), static_cast<uint32_t>(g)), z);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const float c = a.c(m, n_in + k);
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[m][j] = acc[m][j] + z[j] * c;
        }
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (vec) {
        store4(a.out[m], a.out_dtype[m], base, acc[m]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j < count) store_scalar(a.out[m], a.out_dtype[m], base + j, acc[m][j]);
        }
      }
    }
    g += p.stride_groups;
    if (g >= p.groups_per_sample) {
      g -= p.groups_per_sample;
      ++b;
    }
  }
}

// The launch decision, a host function shared by the CUDA launcher (fused_step_launch.cuh) and the CPU harness
// that runs this kernel's source serially (tests/kernels/cuda_host): kThreads threads per block, at most
// num_blocks_cap blocks (the grid-stride loop covers the rest), vectorised access iff every pointer is 16-byte
// aligned and the per-sample size is a multiple of 4.
struct LaunchPlan {
  KernelParams params;
  int64_t blocks;  // 0: nothing to launch
  int threads;
};

inline LaunchPlan plan_fused_step_launch(const FusedStepArgs& args, int num_blocks_cap) {
  LaunchPlan plan;
  KernelParams& p = plan.params;
  p.args = args;
  p.groups_per_sample = (args.per_sample + 3) / 4;
  const int64_t total_groups = args.samples * p.groups_per_sample;
  bool aligned = args.per_sample % 4 == 0;
  for (int n = 0; n < args.num_in; ++n) aligned = aligned && (reinterpret_cast<uintptr_t>(args.in[n]) % 16 == 0);
  for (int m = 0; m < args.num_out; ++m) aligned = aligned && (reinterpret_cast<uintptr_t>(args.out[m]) % 16 == 0);
  p.vectorized = aligned;
  plan.threads = kThreads;
  int64_t blocks = (total_groups + kThreads - 1) / kThreads;
  if (blocks > num_blocks_cap) blocks = num_blocks_cap;
  plan.blocks = blocks;
  if (blocks > 0) {
    const int64_t stride = blocks * kThreads;
    p.stride_samples = stride / p.groups_per_sample;
    p.stride_groups = stride - p.stride_samples * p.groups_per_sample;
  } else {
    p.stride_samples = p.stride_groups = 0;
  }
  return plan;
}

// The M/K dispatch: calls launch(std::integral_constant<int, M>, std::integral_constant<int, K>) for the kernel
// variant of these arguments (M = num_out in 1..2, K = num_noise in 0..4).
template <int M, class Launch>
inline void dispatch_noise(int num_noise, Launch&& launch) {
  switch (num_noise) {
    case 0: launch(std::integral_constant<int, M>(), std::integral_constant<int, 0>()); break;
    case 1: launch(std::integral_constant<int, M>(), std::integral_constant<int, 1>()); break;
    case 2: launch(std::integral_constant<int, M>(), std::integral_constant<int, 2>()); break;
    case 3: launch(std::integral_constant<int, M>(), std::integral_constant<int, 3>()); break;
    default: launch(std::integral_constant<int, M>(), std::integral_constant<int, 4>()); break;
  }
}

template <class Launch>
inline void dispatch_fused_step(const FusedStepArgs& args, Launch&& launch) {
  if (args.num_out == 1) {
    dispatch_noise<1>(args.num_noise, launch);
  } else {
    dispatch_noise<2>(args.num_noise, launch);
  }
}

}  // namespace cuda
}  // namespace fastint
