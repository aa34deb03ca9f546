// Shim: see cuda_shim.h (the kernel includes <cuda_runtime.h>; the harness puts this folder first).
#pragma once
#include "cuda_shim.h"
