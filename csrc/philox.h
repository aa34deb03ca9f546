// Counter-based Philox4x32-10 noise, shared by the CPU and CUDA kernels (host and device code).
//
// Bit-identical to Triton's tl.randint4x and to fastint/ops/philox.py (see docs/noise.md):
//   key = (seed lo32, seed hi32), counter = (e / 4, 4 * counter + k, 0, 0) for element e of a sample, stream k;
//   U(w) = float(i) * 4.6566127342e-10f with i = int32(w), i <- ~i where i < 0;
//   (n0, n1) = BoxMuller(U(w0), U(w1)), (n2, n3) = BoxMuller(U(w2), U(w3)); z[e] = n_{e % 4}.
// No torch, no CUDA runtime headers: nvcc and any C++ compiler can include this file on its own.
#pragma once

#include <stdint.h>
#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTINT_HD __host__ __device__ __forceinline__
#else
#define FASTINT_HD inline
#endif

namespace fastint {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.2831855f;        // float32(2 pi), as Triton writes it
constexpr float kMinUniform = 1.0e-7f;       // Box-Muller clamps U(w0) from below
constexpr int kMaxStreams = 4;               // counter word 1 = 4 * counter + stream

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

FASTINT_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Ten rounds of Random123 Philox4x32 on counter (c0, c1, c2, c3) with key (k0, k1).
FASTINT_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kPhiloxRoundA, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kPhiloxRoundB, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  PhiloxWords w;
  w.w0 = c0;
  w.w1 = c1;
  w.w2 = c2;
  w.w3 = c3;
  return w;
}

// The words of element group g (elements 4g .. 4g+3) of one sample, stream `stream` at step `counter`.
FASTINT_HD PhiloxWords philox_group(uint64_t seed, uint32_t counter, uint32_t stream, uint32_t group) {
  return philox4x32_10(group, counter * static_cast<uint32_t>(kMaxStreams) + stream, 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Triton's uint_to_uniform_float for 32-bit words: [0, 1).
FASTINT_HD float uint32_to_uniform(uint32_t w) {
  int32_t i = static_cast<int32_t>(w);
  i = i < 0 ? ~i : i;
  return static_cast<float>(i) * kUniformScale;
}

// Triton's pair_uniform_to_normal in float32 (scalar libm / CUDA full-precision functions).
FASTINT_HD void box_muller(float u_radius, float u_angle, float* n_cos, float* n_sin) {
  u_radius = u_radius < kMinUniform ? kMinUniform : u_radius;
  const float theta = kTwoPi * u_angle;
  const float radius = sqrtf(-2.0f * logf(u_radius));
#if defined(__CUDA_ARCH__)
  // sin and cos of theta in [0, 2 pi] without sincosf's large-argument (Payne-Hanek) path, whose local-memory
  // frame and registers cost occupancy: theta / pi = q / 2 + r with q = rint(2 theta / pi) and |r| <= 1/4, both in
  // double (exact to ~1e-16), then sincospif(r) (1 ulp) and the quadrant q mod 4. Differs from sincosf(theta) by
  // ~1e-7 absolute at most (the rounding of r to float), as the host's cosf/sinf do.
  const double half_turns = static_cast<double>(theta) * 0.31830988618379067154;  // theta / pi
  const double q = rint(2.0 * half_turns);
  float sr, cr;
  sincospif(static_cast<float>(half_turns - 0.5 * q), &sr, &cr);
  const int quadrant = static_cast<int>(q) & 3;
  const float s = quadrant == 0 ? sr : quadrant == 1 ? cr : quadrant == 2 ? -sr : -cr;
  const float c = quadrant == 0 ? cr : quadrant == 1 ? -sr : quadrant == 2 ? -cr : sr;
  *n_cos = radius * c;
  *n_sin = radius * s;
#else
  *n_cos = radius * cosf(theta);
  *n_sin = radius * sinf(theta);
#endif
}

// The four standard normals of one Philox group, z[j] for elements 4g + j.
FASTINT_HD void normals4(const PhiloxWords& w, float z[4]) {
  box_muller(uint32_to_uniform(w.w0), uint32_to_uniform(w.w1), &z[0], &z[1]);
  box_muller(uint32_to_uniform(w.w2), uint32_to_uniform(w.w3), &z[2], &z[3]);
}

}  // namespace fastint
