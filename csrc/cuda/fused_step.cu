// CUDA implementation of fastint::fused_step: checks, then one kernel launch on the current stream
// (fused_step_kernel.cuh). No host synchronisation, no allocation: capturable in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <atomic>

#include "../ops.h"
#include "fused_step_launch.cuh"

namespace fastint {
namespace {

// Multiprocessor count of a device, queried once (an attribute query: no synchronisation, fine during capture).
int multiprocessor_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device < 0 || device >= static_cast<int>(cache.size())) return 132;
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

void fused_step_cuda(at::TensorList outs, at::TensorList inputs, at::ArrayRef<double> coeffs,
                     const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  const FusedStepArgs args = make_fused_step_args(outs, inputs, coeffs, seeds, counter, num_noise, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const int sms = multiprocessor_count(inputs[0].device().index());
  const cudaError_t err = cuda::launch_fused_step(args, sms * 16, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_CHECK(err);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastint, CUDA, m) {
  m.impl("fused_step", &fused_step_cuda);
}

}  // namespace fastint
