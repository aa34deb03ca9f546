// Torch-facing helpers shared by the CPU and CUDA implementations of fastint::fused_step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "fused_step.h"

namespace fastint {

// The checks every entry of the op makes whatever the device (fastint/ops/contract.py makes the same in Python):
// outputs pairwise disjoint in memory, each output either disjoint from each input or the same elements (an
// in-place update: same address and element size, contiguous input), and every coefficient finite and
// representable in the kernels' float32 (|c| <= FLT_MAX, NaN refused). Throws c10::Error naming the problem.
void check_fused_step_call(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs);

// Check a call (the Python contract already validated it; this guards direct torch.ops calls and the fast entry:
// the tensors' devices, shapes, dtypes and layout, then check_fused_step_call's checks, made on the addresses of
// the now known contiguous, equally shaped tensors) and pack the kernel arguments.
// Throws c10::Error naming the problem.
FusedStepArgs make_fused_step_args(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                                   const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise,
                                   c10::DeviceType device);

}  // namespace fastint
