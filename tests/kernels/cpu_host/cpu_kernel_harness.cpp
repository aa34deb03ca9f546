// Test entries into the CPU tile kernel's Box-Muller pieces (csrc/cpu/fused_step_impl.h, unchanged), compiled by
// cpu_host.py once per CPU capability with the extension's flags for it (-DCPU_CAPABILITY_AVX2 -mavx2 -mfma -mf16c,
// or DEFAULT with none), and called through ctypes:
//   fastint_cpu_box_muller  the capability's box_muller_vec (AVX2: polynomial log and sincos; DEFAULT: libm);
//   fastint_cpu_log8 / fastint_cpu_sincos8 (AVX2 only)  the polynomial approximations on their own.
#define FASTINT_TILE_FN fastint_cpu_host_tile  // the tile function of this copy (unused)
#include "cpu/fused_step_impl.h"

extern "C" {

// In place, n % 8 == 0: (ua, ub) <- (r cos th, r sin th), r = sqrt(-2 log max(1e-7, ua)), th = 2 pi ub.
void fastint_cpu_box_muller(float* ua, float* ub, int64_t n) { fastint::cpu::box_muller_vec(ua, ub, n); }

#if defined(CPU_CAPABILITY_AVX2)
void fastint_cpu_log8(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, fastint::cpu::fi_log8(_mm256_loadu_ps(x + i)));
}

void fastint_cpu_sincos8(const float* x, float* s, float* c, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    __m256 vs, vc;
    fastint::cpu::fi_sincos8(_mm256_loadu_ps(x + i), &vs, &vc);
    _mm256_storeu_ps(s + i, vs);
    _mm256_storeu_ps(c + i, vc);
  }
}
#endif

}  // extern "C"
