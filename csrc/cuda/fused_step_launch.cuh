// Launch of the fused-step kernel on a CUDA stream: the plan and the M/K/E dispatch of fused_step_kernel.cuh (shared
// with the CPU harness tests/kernels/cuda_host), then one kernel launch. No allocation, no synchronisation.
#pragma once

#include <cuda_runtime.h>

#include "fused_step_kernel.cuh"

namespace fastint {
namespace cuda {

// Launch on `stream`. Returns the launch error, if any.
inline cudaError_t launch_fused_step(const FusedStepArgs& args, int num_blocks_cap, cudaStream_t stream) {
  const LaunchPlan plan = plan_fused_step_launch(args, num_blocks_cap);
  if (plan.blocks == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(plan.blocks)), block(static_cast<unsigned>(plan.threads));
  dispatch_fused_step(plan, [&](auto m, auto k, auto e) {
    fused_step_kernel<decltype(m)::value, decltype(k)::value, decltype(e)::value><<<grid, block, 0, stream>>>(
        plan.params);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastint
