// CUDA kernel of the fused step. Device code only: no torch headers, so nvcc compiles it on its own
// (`make check-cuda`); the torch-facing launcher is fused_step.cu.
//
// One thread handles one work unit: 4 consecutive elements of one sample (one Philox group: one Philox call per
// noise stream yields the group's four normals), or 8 (two groups) when every tensor of the call is 16-bit, so that
// each access is 16 bytes wide. Loads and stores are vectorised when every pointer is 16-byte aligned and the
// per-sample size is a multiple of the unit; otherwise (and for a sample's last, partial unit) scalar. All inputs of a group are read before any output is written,
// so an output may alias an input. Math is float32 in the eager reference's order; coefficients arrive by value
// in the kernel parameters (no device tensor, CUDA-graph capturable); seeds are read on the device.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../fused_step.h"
#include "../philox.h"

namespace fastint {
namespace cuda {

__device__ __forceinline__ float fp16_bits_to_float_dev(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ uint16_t float_to_fp16_bits_dev(float v) { return __half_as_ushort(__float2half_rn(v)); }

struct KernelParams {
  FusedStepArgs args;
  int64_t units_per_sample;  // ceil(per_sample / E): the work units of one sample (E elements each)
  int64_t total_units;
  bool vectorized;           // every pointer 16-byte aligned and per_sample % E == 0
  bool narrow_index;         // total_units < 2**32: 32-bit index arithmetic (one 32-bit division per unit)
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

// E consecutive elements starting at i (i % E == 0, pointer 16-byte aligned) in 16-byte accesses: E = 4 is one
// float4 (float32) or one 8-byte access (half types, when another tensor of the call is float32); E = 8 is one
// 16-byte access of 8 half values (every tensor of the call in a 16-bit type).
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
  uint32_t w[E / 2];
#pragma unroll
  for (int j = 0; j < E / 2; ++j)
    w[j] = float_to_half_bits(dtype, x[2 * j]) | (float_to_half_bits(dtype, x[2 * j + 1]) << 16);
  if (E == 4) {
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p) + i) = make_uint2(w[0], w[1]);
  } else {
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p) + i) = make_uint4(w[0], w[1], w[E > 4 ? 2 : 0],
                                                                          w[E > 4 ? 3 : 0]);
  }
}

// One thread computes one work unit of E = 4 or 8 consecutive elements of one sample (E / 4 Philox groups, one
// Philox call per group and noise stream) in a grid-stride loop:
//   out[m][e] = sum_n C[m, n] in[n][e] + sum_k C[m, N + k] z_k[e],   z_k[4g + j] = normals4(philox(seed, counter,
//   k, g))[j].
// M outputs, K noise streams and E are compile-time (20 instantiations); N is a uniform runtime loop (<= 6).
// All inputs of a unit are read before any output is written, so an output may alias an input.
// __grid_constant__: the parameters (coefficients included) stay in the constant bank.
template <int M, int K, int E>
__global__ void __launch_bounds__(256) fused_step_kernel(const __grid_constant__ KernelParams p) {
  constexpr int G = E / 4;  // Philox groups per unit
  const FusedStepArgs& a = p.args;
  const int n_in = a.num_in;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t unit = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; unit < p.total_units;
       unit += stride) {
    int64_t b, u;
    if (p.narrow_index) {
      const uint32_t per = static_cast<uint32_t>(p.units_per_sample);
      b = static_cast<uint32_t>(unit) / per;
      u = static_cast<uint32_t>(unit) - static_cast<uint32_t>(b) * per;
    } else {
      b = unit / p.units_per_sample;
      u = unit - b * p.units_per_sample;
    }
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
#pragma unroll
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
  }
}

// The launch decision, shared by the extension and the compile check: elements per thread (8 when every tensor of
// the call is 16-bit, so that each access is 16 bytes; else 4), the vectorised path (every pointer 16-byte aligned
// and per_sample % E == 0, so that every unit starts 16-byte aligned), the index width.
inline KernelParams kernel_params(const FusedStepArgs& args, int* elements_per_thread) {
  bool all_half = true;
  for (int n = 0; n < args.num_in; ++n) all_half = all_half && args.in_dtype[n] != kFloat32;
  for (int m = 0; m < args.num_out; ++m) all_half = all_half && args.out_dtype[m] != kFloat32;
  const int e = all_half ? 8 : 4;
  KernelParams p;
  p.args = args;
  p.units_per_sample = (args.per_sample + e - 1) / e;
  p.total_units = args.samples * p.units_per_sample;
  bool aligned = args.per_sample % e == 0;
  for (int n = 0; n < args.num_in; ++n) aligned = aligned && (reinterpret_cast<uintptr_t>(args.in[n]) % 16 == 0);
  for (int m = 0; m < args.num_out; ++m) aligned = aligned && (reinterpret_cast<uintptr_t>(args.out[m]) % 16 == 0);
  p.vectorized = aligned;
  p.narrow_index = p.total_units < (int64_t(1) << 32);
  *elements_per_thread = e;
  return p;
}

// Launch on `stream` (no allocation, no synchronisation). Returns the launch error, if any.
inline cudaError_t launch_fused_step(const FusedStepArgs& args, int num_blocks_cap, cudaStream_t stream) {
  int e = 4;
  const KernelParams p = kernel_params(args, &e);
  if (p.total_units == 0) return cudaSuccess;
  const int threads = 256;
  int64_t blocks = (p.total_units + threads - 1) / threads;
  if (blocks > num_blocks_cap) blocks = num_blocks_cap;
  const dim3 grid(static_cast<unsigned>(blocks)), block(threads);
#define FASTINT_LAUNCH(M_, K_)                                                  \
  if (e == 8) {                                                                \
    fused_step_kernel<M_, K_, 8><<<grid, block, 0, stream>>>(p);               \
  } else {                                                                     \
    fused_step_kernel<M_, K_, 4><<<grid, block, 0, stream>>>(p);               \
  }
#define FASTINT_LAUNCH_K(M_)                \
  switch (args.num_noise) {                 \
    case 0: FASTINT_LAUNCH(M_, 0) break;    \
    case 1: FASTINT_LAUNCH(M_, 1) break;    \
    case 2: FASTINT_LAUNCH(M_, 2) break;    \
    case 3: FASTINT_LAUNCH(M_, 3) break;    \
    default: FASTINT_LAUNCH(M_, 4) break;   \
  }
  if (args.num_out == 1) {
    FASTINT_LAUNCH_K(1)
  } else {
    FASTINT_LAUNCH_K(2)
  }
#undef FASTINT_LAUNCH_K
#undef FASTINT_LAUNCH
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastint
