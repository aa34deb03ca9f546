// The CPU tile kernel compiled for CPU capability AVX2 (setup.py compiles this file alone with -mavx2 -mfma -mf16c).
// Chosen at run time by fused_step.cpp when ATen's own kernels run at this capability (see fused_step_impl.h).
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FASTINT_TILE_FN fused_step_tile_avx2
#include "fused_step_impl.h"
