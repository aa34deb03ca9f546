// The fused step op's per-element math and kernel arguments, shared by the CPU and CUDA kernels.
//
//   out[m] = sum_n C[m, n] * in[n] + sum_k C[m, N + k] * z_k      (m < M <= 2, n < N <= 6, k < K <= 4)
//
// Coefficients travel by value inside FusedStepArgs (scalar kernel arguments, never a device tensor: no H2D copy,
// CUDA-graph capturable). Arithmetic is float32 in the order of the eager reference:
//   acc = C[m,0] in[0]; acc += C[m,1] in[1]; ...; acc += C[m,N] z_0; ...
// No torch headers here: nvcc compiles this file on its own (see Makefile `check-cuda`).
#pragma once

#include <stdint.h>
#include <string.h>

#include "philox.h"

namespace fastint {

constexpr int kMaxInputs = 6;
constexpr int kMaxOutputs = 2;
constexpr int kMaxNoise = 4;
constexpr int kMaxCoeffs = kMaxOutputs * (kMaxInputs + kMaxNoise);

enum DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct FusedStepArgs {
  const void* in[kMaxInputs];
  void* out[kMaxOutputs];
  int32_t in_dtype[kMaxInputs];
  int32_t out_dtype[kMaxOutputs];
  float coef[kMaxCoeffs];       // row-major (M, N + K), already rounded to float32 as the eager backend does
  int32_t num_in;               // N
  int32_t num_out;              // M
  int32_t num_noise;            // K
  uint32_t counter;             // noise counter (step index)
  int64_t samples;              // leading dimension
  int64_t per_sample;           // elements per sample
  const int64_t* seeds;         // per-sample seeds on the tensors' device (nullptr when K == 0)

  FASTINT_HD float c(int m, int j) const { return coef[m * (num_in + num_noise) + j]; }
};

FASTINT_HD float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// Round-to-nearest-even float32 -> bfloat16 (NaN stays NaN), as c10::BFloat16 does.
FASTINT_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE binary16 <-> float32 without intrinsics (portable host fallback; devices use their own instructions).
FASTINT_HD float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      u = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | ((man & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

FASTINT_HD uint16_t float_to_fp16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);        // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);       // overflow (after rounding) -> inf
  if (absu < 0x38800000u) {                                                     // subnormal or zero in fp16
    if (absu < 0x33000000u) return sign;                                         // < half the smallest subnormal
    const uint32_t e = absu >> 23;
    const uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                                             // 14 + (113 - e) - 1
    const uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    uint32_t r = q;
    if (rem > halfway || (rem == halfway && (q & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = absu - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

}  // namespace fastint
