// Torch-facing helpers shared by the CPU and CUDA implementations of fastint::fused_step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "fused_step.h"

namespace fastint {

// Check a call (the Python contract already validated it; this guards direct torch.ops calls) and pack the
// kernel arguments. Throws c10::Error naming the problem.
FusedStepArgs make_fused_step_args(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                                   const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise,
                                   c10::DeviceType device);

}  // namespace fastint
