// The body of the CPU tile kernel. Included once per CPU capability by fused_step_{default,avx2,avx512}.cpp, each
// compiled with its own instruction-set flags and CPU_CAPABILITY macros (set by setup.py), exactly as ATen builds
// its own kernels. FASTINT_TILE_FN names the function defined here.
//
// Per tile: inputs are read once (converted to float32), the M accumulators live in L1, the K noise streams are
// generated in three vectorised passes (Philox integer rounds, uniforms, Box-Muller with at::vec::Vectorized /
// SLEEF u10 log, sin, cos), and each output is written once after every input of the tile has been read (so an
// output may alias an input).
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#include <sleef.h>
#endif

#include <algorithm>
#include <cmath>

#include "fused_step_kernel.h"

#ifndef FASTINT_TILE_FN
#error "define FASTINT_TILE_FN before including fused_step_impl.h"
#endif

namespace fastint {
namespace cpu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kGroups = kTile / 4;

inline Vec vlog(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(Sleef_logf16_u10(x));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vec(Sleef_logf8_u10(x));
#else
  return x.map(std::log);
#endif
}

inline void vsincos(const Vec& x, Vec* s, Vec* c) {
#if defined(CPU_CAPABILITY_AVX512)
  *s = Vec(Sleef_sinf16_u10(x));
  *c = Vec(Sleef_cosf16_u10(x));
#elif defined(CPU_CAPABILITY_AVX2)
  *s = Vec(Sleef_sinf8_u10(x));
  *c = Vec(Sleef_cosf8_u10(x));
#else
  *s = x.map(std::sin);
  *c = x.map(std::cos);
#endif
}

// Half-precision tile loads/stores (F16C where compiled in; bf16 is a shift the compiler vectorises).
inline void load_fp16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = fp16_bits_to_float(src[i]);
}

inline void store_fp16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
#endif
  for (; i < n; ++i) dst[i] = float_to_fp16_bits(src[i]);
}

inline void load_bf16(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(src[i]);
}

inline void store_bf16(const float* __restrict src, uint16_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16_bits(src[i]);
}

// acc (= or +=) c * x over the tile, for one or two output rows at once.
template <bool kFirst>
inline void accumulate(float* __restrict acc0, float* __restrict acc1, const float* __restrict x, float c0, float c1,
                       int num_out, int64_t n) {
  if (num_out == 1) {
    for (int64_t i = 0; i < n; ++i) acc0[i] = kFirst ? x[i] * c0 : acc0[i] + x[i] * c0;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float v = x[i];
      acc0[i] = kFirst ? v * c0 : acc0[i] + v * c0;
      acc1[i] = kFirst ? v * c1 : acc1[i] + v * c1;
    }
  }
}

// Philox words of groups first_group .. first_group + count - 1: a branch-free loop the compiler vectorises
// (32x32->64 bit products become vpmuludq).
inline void philox_words(uint32_t first_group, uint32_t ctr, uint32_t k0, uint32_t k1, int64_t count,
                         uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                         uint32_t* __restrict w3) {
  for (int64_t g = 0; g < count; ++g) {
    uint32_t c0 = first_group + static_cast<uint32_t>(g), c1 = ctr, c2 = 0, c3 = 0, ka = k0, kb = k1;
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxRoundA) * c0;
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxRoundB) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ ka;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ kb;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      ka += kPhiloxKeyA;
      kb += kPhiloxKeyB;
    }
    w0[g] = c0;
    w1[g] = c1;
    w2[g] = c2;
    w3[g] = c3;
  }
}

inline void to_uniform(const uint32_t* __restrict w, float* __restrict u, int64_t count) {
  for (int64_t g = 0; g < count; ++g) {
    int32_t i = static_cast<int32_t>(w[g]);
    i = i < 0 ? ~i : i;
    u[g] = static_cast<float>(i) * kUniformScale;
  }
}

// In place: (ua, ub) <- (r cos th, r sin th), r = sqrt(-2 log max(1e-7, ua)), th = 2pi ub. count % Vec::size() == 0.
inline void box_muller_vec(float* ua, float* ub, int64_t count) {
  const Vec min_u(kMinUniform), minus_two(-2.0f), two_pi(kTwoPi);
  for (int64_t g = 0; g < count; g += Vec::size()) {
    const Vec u0 = at::vec::maximum(Vec::loadu(ua + g), min_u);
    const Vec th = two_pi * Vec::loadu(ub + g);
    const Vec r = (minus_two * vlog(u0)).sqrt();
    Vec s, c;
    vsincos(th, &s, &c);
    (r * c).store(ua + g);
    (r * s).store(ub + g);
  }
}

}  // namespace

void FASTINT_TILE_FN(const FusedStepArgs& a, int64_t sample, int64_t first, int64_t len) {
  alignas(64) float acc[kMaxOutputs][kTile];
  alignas(64) float tmp[kTile];
  const int num_out = a.num_out;
  const int64_t base = sample * a.per_sample + first;

  for (int n = 0; n < a.num_in; ++n) {
    const float* x;
    switch (a.in_dtype[n]) {
      case kFloat16:
        load_fp16(static_cast<const uint16_t*>(a.in[n]) + base, tmp, len);
        x = tmp;
        break;
      case kBFloat16:
        load_bf16(static_cast<const uint16_t*>(a.in[n]) + base, tmp, len);
        x = tmp;
        break;
      default:
        x = static_cast<const float*>(a.in[n]) + base;
    }
    const float c0 = a.c(0, n), c1 = num_out > 1 ? a.c(1, n) : 0.0f;
    if (n == 0) {
      accumulate<true>(acc[0], acc[1], x, c0, c1, num_out, len);
    } else {
      accumulate<false>(acc[0], acc[1], x, c0, c1, num_out, len);
    }
  }

  if (a.num_noise > 0) {
    alignas(64) uint32_t w[4][kGroups];
    alignas(64) float u[4][kGroups];
    const int64_t groups = (len + 3) / 4;
    const int64_t padded = (groups + Vec::size() - 1) / Vec::size() * Vec::size();  // <= kGroups
    const uint64_t seed = static_cast<uint64_t>(a.seeds[sample]);
    const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const uint32_t first_group = static_cast<uint32_t>(first / 4);
    for (int k = 0; k < a.num_noise; ++k) {
      const uint32_t ctr = a.counter * static_cast<uint32_t>(kMaxStreams) + static_cast<uint32_t>(k);
      philox_words(first_group, ctr, k0, k1, padded, w[0], w[1], w[2], w[3]);
      for (int j = 0; j < 4; ++j) to_uniform(w[j], u[j], padded);
      box_muller_vec(u[0], u[1], padded);
      box_muller_vec(u[2], u[3], padded);
      for (int64_t g = 0; g < groups; ++g) {  // interleave: z[4g + j] = n_j[g]
        tmp[4 * g + 0] = u[0][g];
        tmp[4 * g + 1] = u[1][g];
        tmp[4 * g + 2] = u[2][g];
        tmp[4 * g + 3] = u[3][g];
      }
      const float c0 = a.c(0, a.num_in + k), c1 = num_out > 1 ? a.c(1, a.num_in + k) : 0.0f;
      accumulate<false>(acc[0], acc[1], tmp, c0, c1, num_out, len);
    }
  }

  for (int m = 0; m < num_out; ++m) {
    switch (a.out_dtype[m]) {
      case kFloat16:
        store_fp16(acc[m], static_cast<uint16_t*>(a.out[m]) + base, len);
        break;
      case kBFloat16:
        store_bf16(acc[m], static_cast<uint16_t*>(a.out[m]) + base, len);
        break;
      default: {
        float* __restrict o = static_cast<float*>(a.out[m]) + base;
        for (int64_t i = 0; i < len; ++i) o[i] = acc[m][i];
      }
    }
  }
}

}  // namespace cpu
}  // namespace fastint
