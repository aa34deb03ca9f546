// The CPU tile kernel compiled for CPU capability AVX512 (setup.py compiles this file alone with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c).
// Chosen at run time by fused_step.cpp when ATen's own kernels run at this capability (see fused_step_impl.h).
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FASTINT_TILE_FN fused_step_tile_avx512
#include "fused_step_impl.h"
