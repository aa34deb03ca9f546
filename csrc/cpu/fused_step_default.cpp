// The CPU tile kernel compiled for CPU capability DEFAULT (setup.py compiles this file alone with no instruction-set flags).
// Chosen at run time by fused_step.cpp when ATen's own kernels run at this capability (see fused_step_impl.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define FASTINT_TILE_FN fused_step_tile_default
#include "fused_step_impl.h"
