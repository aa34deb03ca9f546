// CPU tile kernels of the fused step, one per CPU capability (DEFAULT, AVX2, AVX512), chosen at run time.
//
// A tile is up to kTile consecutive elements of ONE sample starting at an element index that is a multiple of 4
// (a Philox group boundary). The driver (fused_step.cpp) splits the work with at::parallel_for.
#pragma once

#include <stdint.h>

#include "../fused_step.h"

namespace fastint {
namespace cpu {

constexpr int64_t kTile = 1024;  // elements per tile: all tile buffers (~28 KB) stay in L1/L2

using TileFn = void (*)(const FusedStepArgs& args, int64_t sample, int64_t first, int64_t len);

void fused_step_tile_default(const FusedStepArgs&, int64_t, int64_t, int64_t);
#if defined(FASTINT_HAVE_AVX2)
void fused_step_tile_avx2(const FusedStepArgs&, int64_t, int64_t, int64_t);
#endif
#if defined(FASTINT_HAVE_AVX512)
void fused_step_tile_avx512(const FusedStepArgs&, int64_t, int64_t, int64_t);
#endif

}  // namespace cpu
}  // namespace fastint
