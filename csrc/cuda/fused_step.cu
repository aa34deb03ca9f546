// CUDA implementation of fastint::fused_step: checks, then one kernel launch on the current stream
// (fused_step_kernel.cuh). No host synchronisation, no allocation: capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops.h"
#include "fused_step_kernel.cuh"

namespace fastint {
namespace {

void fused_step_cuda(at::TensorList outs, at::TensorList inputs, at::ArrayRef<double> coeffs,
                     const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  const FusedStepArgs args = make_fused_step_args(outs, inputs, coeffs, seeds, counter, num_noise, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;  // cached by ATen, no sync
  const cudaError_t err = cuda::launch_fused_step(args, sms * 16, at::cuda::getCurrentCUDAStream());
  C10_CUDA_CHECK(err);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastint, CUDA, m) {
  m.impl("fused_step", &fused_step_cuda);
}

}  // namespace fastint
