// Compile-only check of the CUDA kernel without torch (`make check-cuda`, CI has a CPU-only torch): instantiates
// every kernel variant (M = 1..2, K = 0..4) through the launcher. Not part of the built extension.
#include "cuda/fused_step_launch.cuh"

cudaError_t fastint_check_launch(const fastint::FusedStepArgs& args, cudaStream_t stream) {
  return fastint::cuda::launch_fused_step(args, 1024, stream);
}
