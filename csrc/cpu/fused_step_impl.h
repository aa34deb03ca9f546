// The body of the CPU tile kernel. Included once per CPU capability by fused_step_{default,avx2,avx512}.cpp, each
// compiled with its own instruction-set flags (set by setup.py), as ATen builds its own kernels; no torch header is
// included here, so no c10 inline function gets compiled with those flags. FASTINT_TILE_FN names the function defined here.
//
// Per tile: inputs are read once (converted to float32), the M accumulators live in L1, the K noise streams are
// generated in three vectorised passes (Philox integer rounds, uniforms, Box-Muller with polynomial log and
// sincos), and each output is written once after every input of the tile has been read (so an
// output may alias an input). With noise the tile is compute-bound, so while the SIMD noise loop runs it prefetches
// the next tile's inputs and outputs (NextTile): the memory traffic of the step then hides under the noise
// arithmetic instead of adding to it (1 thread, 4M fp32 elements: 13.4 -> 9.5 ms).
// The SIMD paths use 256-bit AVX2/FMA intrinsics (also in the AVX512 build, where they run at the same width).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
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

constexpr int64_t kGroups = kTile / 4;

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// Box-Muller transcendentals for the ranges that occur (u in [1e-7, 1), theta in [0, 2pi)), Cephes-style
// polynomials with FMA: log within 0.85 ulp, sin/cos within 1.6 ulp where |value| >= 1/64 and 1.6 x 2^-24
// absolute there (checked on dense grids against float64: tests/kernels/test_cpu_kernel_math.py).
inline __m256 fi_log8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                 _mm256_set1_epi32(0x3f000000)));
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, one));
  const __m256 f = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), one);
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 p = _mm256_set1_ps(7.0376836292E-2f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.1514610310E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.1676998740E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.2420140846E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.4249322787E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.6668057665E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0000714765E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-2.4999993993E-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(3.3333331174E-1f));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  const __m256 r = _mm256_add_ps(f, y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), r);
}
inline void fi_sincos8(__m256 x, __m256* s, __m256* c) {
  // j = nearest even integer to x / (pi/4); x - j pi/4 in [-pi/4, pi/4] by two FMAs with pi/4 split into
  // float32(pi/4) + the float32 of the rest (each FMA rounds once: within an ulp for the x < 2pi that occur)
  __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(x, _mm256_set1_ps(1.27323954473516f)));
  j = _mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(1)), _mm256_set1_epi32(~1));
  const __m256 y = _mm256_cvtepi32_ps(j);
  x = _mm256_fnmadd_ps(y, _mm256_set1_ps(0.785398185253143310546875f), x);
  x = _mm256_fnmadd_ps(y, _mm256_set1_ps(-2.18556941e-8f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 ps = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891E-4f), z, _mm256_set1_ps(8.3321608736E-3f));
  ps = _mm256_fmadd_ps(ps, z, _mm256_set1_ps(-1.6666654611E-1f));
  ps = _mm256_fmadd_ps(_mm256_mul_ps(ps, z), x, x);
  __m256 pc = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948E-005f), z, _mm256_set1_ps(-1.388731625493765E-003f));
  pc = _mm256_fmadd_ps(pc, z, _mm256_set1_ps(4.166664568298827E-002f));
  pc = _mm256_fmadd_ps(_mm256_mul_ps(pc, z), z, _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  // quadrant q = j / 2: (sin, cos) = (ps, pc), (pc, -ps), (-ps, -pc), (-pc, ps). Bit 1 of j (q odd) swaps,
  // bit 2 of j (q in {2, 3}) negates sin, bit 2 of j + 2 negates cos; blendv and the sign flips read bit 31.
  const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(j, 30));
  const __m256 sv = _mm256_blendv_ps(ps, pc, swap);
  const __m256 cv = _mm256_blendv_ps(pc, ps, swap);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i sin_neg = _mm256_and_si256(_mm256_slli_epi32(j, 29), sign);
  const __m256i cos_neg = _mm256_and_si256(_mm256_slli_epi32(_mm256_add_epi32(j, _mm256_set1_epi32(2)), 29), sign);
  *s = _mm256_xor_ps(sv, _mm256_castsi256_ps(sin_neg));
  *c = _mm256_xor_ps(cv, _mm256_castsi256_ps(cos_neg));
}
#endif

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

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// (hi, lo) 32-bit halves of x * m in 8 lanes: the high halves from two vpmuludq (even lanes, then the odd lanes
// moved down by vpshufd) and a blend with the even products' high halves moved down by vmovshdup, the low halves
// from one vpmulld. The shuffles run on other ports than the shifts they replace (~3% on the SDE step); GCC's
// auto-vectorisation of the 64-bit products shuffles across lanes and is ~6x slower.
inline __m256i mulhilo8(__m256i x, __m256i m, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_shuffle_epi32(x, 0xF5), m);
  *lo = _mm256_mullo_epi32(x, m);
  const __m256i even_hi = _mm256_castps_si256(_mm256_movehdup_ps(_mm256_castsi256_ps(even)));
  return _mm256_blend_epi32(even_hi, odd, 0xAA);
}
#endif

// Philox words of groups first_group .. first_group + count - 1 (count % 8 == 0 on the SIMD path).
inline void philox_words(uint32_t first_group, uint32_t ctr, uint32_t k0, uint32_t k1, int64_t count,
                         uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                         uint32_t* __restrict w3) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t g = 0; g < count; g += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first_group + static_cast<uint32_t>(g))), lane);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(ctr));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t ka = k0, kb = k1;
    for (int r = 0; r < 10; ++r) {
      __m256i lo0, lo1;
      const __m256i hi0 = mulhilo8(c0, ma, &lo0);
      const __m256i hi1 = mulhilo8(c2, mb, &lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(ka)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(kb)));
      c1 = lo1;
      c3 = lo0;
      ka += kPhiloxKeyA;
      kb += kPhiloxKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + g), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + g), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + g), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + g), c3);
  }
  return;
#endif
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

// In place: (ua, ub) <- (r cos th, r sin th), r = sqrt(-2 log max(1e-7, ua)), th = 2pi ub. count % 8 == 0.
// SIMD: the polynomial log / sincos above (8 lanes; ~3x faster than SLEEF's u10 functions; the normals stay within
// 1e-6 of the eager ones, see tests/kernels). DEFAULT: libm.
inline void box_muller_vec(float* ua, float* ub, int64_t count) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  const __m256 min_u = _mm256_set1_ps(kMinUniform), minus_two = _mm256_set1_ps(-2.0f);
  const __m256 two_pi = _mm256_set1_ps(kTwoPi);
  for (int64_t g = 0; g < count; g += 8) {
    const __m256 u0 = _mm256_max_ps(_mm256_loadu_ps(ua + g), min_u);
    const __m256 th = _mm256_mul_ps(two_pi, _mm256_loadu_ps(ub + g));
    const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(minus_two, fi_log8(u0)));
    __m256 s, c;
    fi_sincos8(th, &s, &c);
    _mm256_storeu_ps(ua + g, _mm256_mul_ps(r, c));
    _mm256_storeu_ps(ub + g, _mm256_mul_ps(r, s));
  }
#else
  for (int64_t g = 0; g < count; ++g) {
    const float u0 = ua[g] < kMinUniform ? kMinUniform : ua[g];
    const float th = kTwoPi * ub[g];
    const float r = std::sqrt(-2.0f * std::log(u0));
    ua[g] = r * std::cos(th);
    ub[g] = r * std::sin(th);
  }
#endif
}

// The memory of the tile that follows this one in the same sample (inputs and outputs), prefetched piecewise:
// prefetch(e, n) touches the cache lines of its elements [e, e + n) in every stream.
struct NextTile {
  const char* ptr[kMaxInputs + kMaxOutputs];
  int64_t elem_bytes[kMaxInputs + kMaxOutputs];
  int count = 0;
  int64_t len = 0;

  NextTile() = default;
  NextTile(const FusedStepArgs& a, int64_t base, int64_t first, int64_t len_here) {
    const int64_t start = first + len_here;
    if (start >= a.per_sample) return;
    len = std::min(kTile, a.per_sample - start);
    for (int n = 0; n < a.num_in; ++n) add(a.in[n], a.in_dtype[n], base + len_here);
    for (int m = 0; m < a.num_out; ++m) add(a.out[m], a.out_dtype[m], base + len_here);
  }

  void add(const void* p, int32_t dtype, int64_t element) {
    elem_bytes[count] = dtype == kFloat32 ? 4 : 2;
    ptr[count] = static_cast<const char*>(p) + element * elem_bytes[count];
    ++count;
  }

  // always_inline: as a call, GCC finds the function free of side effects (prefetches do not count) and drops it.
  __attribute__((always_inline)) void prefetch(int64_t e, int64_t n) const {
    if (e >= len) return;
    n = std::min(n, len - e);
    for (int s = 0; s < count; ++s) {
      for (int64_t b = e * elem_bytes[s]; b < (e + n) * elem_bytes[s]; b += 64) __builtin_prefetch(ptr[s] + b, 0, 3);
    }
  }
};

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// One fused register pass per 16 Philox groups (64 elements): Philox rounds -> uniforms -> Box-Muller -> 4x8
// transpose to element order -> acc += c * z. Nothing but the accumulators touches memory.
inline __m256 uniform8(__m256i w) {
  const __m256i folded = _mm256_xor_si256(w, _mm256_srai_epi32(w, 31));  // i < 0 ? ~i : i
  return _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUniformScale));
}

inline void box_muller8(__m256 ua, __m256 ub, __m256* n_cos, __m256* n_sin) {
  const __m256 u0 = _mm256_max_ps(ua, _mm256_set1_ps(kMinUniform));
  const __m256 th = _mm256_mul_ps(_mm256_set1_ps(kTwoPi), ub);
  const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), fi_log8(u0)));
  __m256 s, c;
  fi_sincos8(th, &s, &c);
  *n_cos = _mm256_mul_ps(r, c);
  *n_sin = _mm256_mul_ps(r, s);
}

inline void noise_accumulate_simd(uint32_t first_group, uint32_t ctr, uint32_t k0, uint32_t k1, int64_t len,
                                  float* acc0, float* acc1, float c0, float c1, int num_out, const NextTile& next) {
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // group offsets of the 8 lanes
  const __m256 vc0 = _mm256_set1_ps(c0), vc1 = _mm256_set1_ps(c1);
  for (int64_t e0 = 0; e0 < len; e0 += 64) {
    next.prefetch(e0, 64);
    // two independent 8-group blocks interleaved in the round loop: the rounds are latency bound, so this runs
    // ~1.4x faster than one block at a time
    __m256i w[2][4];
    for (int u = 0; u < 2; ++u) {
      w[u][0] = _mm256_add_epi32(
          _mm256_set1_epi32(static_cast<int>(first_group + static_cast<uint32_t>(e0 / 4 + 8 * u))), lane);
      w[u][1] = _mm256_set1_epi32(static_cast<int>(ctr));
      w[u][2] = _mm256_setzero_si256();
      w[u][3] = _mm256_setzero_si256();
    }
    uint32_t ka = k0, kb = k1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const __m256i vka = _mm256_set1_epi32(static_cast<int>(ka)), vkb = _mm256_set1_epi32(static_cast<int>(kb));
      for (int u = 0; u < 2; ++u) {
        __m256i lo0, lo1;
        const __m256i hi0 = mulhilo8(w[u][0], ma, &lo0);
        const __m256i hi1 = mulhilo8(w[u][2], mb, &lo1);
        w[u][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, w[u][1]), vka);
        w[u][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, w[u][3]), vkb);
        w[u][1] = lo1;
        w[u][3] = lo0;
      }
      ka += kPhiloxKeyA;
      kb += kPhiloxKeyB;
    }
    __m256 n[2][4];
    for (int u = 0; u < 2; ++u) {
      box_muller8(uniform8(w[u][0]), uniform8(w[u][1]), &n[u][0], &n[u][1]);
      box_muller8(uniform8(w[u][2]), uniform8(w[u][3]), &n[u][2], &n[u][3]);
    }
    for (int u = 0; u < 2; ++u) {
      const int64_t e = e0 + 32 * u;
      if (e >= len) break;
      const __m256 n0 = n[u][0], n1 = n[u][1], n2 = n[u][2], n3 = n[u][3];
      // transpose to element order z[4g + j] = n_j[g]: the lanes hold groups [0 2 4 6 | 1 3 5 7] (see `lane`), so
      // an in-lane 4x4 transpose leaves groups 2k and 2k + 1, i.e. elements 8k .. 8k + 7, in z[k]
      const __m256 a = _mm256_unpacklo_ps(n0, n1), b = _mm256_unpackhi_ps(n0, n1);
      const __m256 c = _mm256_unpacklo_ps(n2, n3), d = _mm256_unpackhi_ps(n2, n3);
      __m256 z[4];
      z[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(c)));
      z[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(c)));
      z[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(b), _mm256_castps_pd(d)));
      z[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(b), _mm256_castps_pd(d)));
      if (e + 32 <= len) {
        for (int q = 0; q < 4; ++q) {
          float* p0 = acc0 + e + 8 * q;
          _mm256_storeu_ps(p0, _mm256_add_ps(_mm256_loadu_ps(p0), _mm256_mul_ps(z[q], vc0)));
          if (num_out > 1) {
            float* p1 = acc1 + e + 8 * q;
            _mm256_storeu_ps(p1, _mm256_add_ps(_mm256_loadu_ps(p1), _mm256_mul_ps(z[q], vc1)));
          }
        }
      } else {
        alignas(32) float zs[32];
        for (int q = 0; q < 4; ++q) _mm256_store_ps(zs + 8 * q, z[q]);
        for (int64_t i = 0; i < len - e; ++i) {
          acc0[e + i] = acc0[e + i] + zs[i] * c0;
          if (num_out > 1) acc1[e + i] = acc1[e + i] + zs[i] * c1;
        }
      }
    }
  }
}
#endif

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
    const int64_t padded = (groups + 15) / 16 * 16;  // SIMD width multiple, <= kGroups
    const uint64_t seed = static_cast<uint64_t>(a.seeds[sample]);
    const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const uint32_t first_group = static_cast<uint32_t>(first / 4);
    [[maybe_unused]] const NextTile next(a, base, first, len);
    for (int k = 0; k < a.num_noise; ++k) {
      const uint32_t ctr = a.counter * static_cast<uint32_t>(kMaxStreams) + static_cast<uint32_t>(k);
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
      noise_accumulate_simd(first_group, ctr, k0, k1, len, acc[0], acc[1], a.c(0, a.num_in + k),
                            num_out > 1 ? a.c(1, a.num_in + k) : 0.0f, num_out, k == 0 ? next : NextTile());
      continue;
#endif
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
