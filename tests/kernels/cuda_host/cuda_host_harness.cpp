// Runs the CUDA fused-step kernel (csrc/cuda/fused_step_kernel.cuh, unchanged) on the CPU: compiled by the host
// compiler with the shim (shim/cuda_shim.h) first on the include path, loaded with ctypes by cuda_host.py.
//
// fastint_cuda_host_fused_step takes the kernel arguments as plain pointers (tensors' data pointers from Python),
// builds FusedStepArgs as the op does (coefficients already float32), and goes through the launcher's own plan
// and M/K/E dispatch (plan_fused_step_launch, dispatch_fused_step); the grid then runs serially, every block and
// every thread of it, in forward or reverse order (the kernel's threads share no data, so both orders must give
// the same result; a group written by two threads would differ in place).
#include "cuda_shim.h"

#include "cuda/fused_step_kernel.cuh"

namespace {

template <int M, int K, int E>
void run_grid(const fastint::cuda::LaunchPlan& plan, bool reverse) {
  gridDim = dim3(static_cast<unsigned>(plan.blocks));
  blockDim = dim3(static_cast<unsigned>(plan.threads));
  const int64_t blocks = plan.blocks, threads = plan.threads;
  for (int64_t i = 0; i < blocks; ++i) {
    blockIdx = uint3{static_cast<unsigned>(reverse ? blocks - 1 - i : i), 0, 0};
    for (int64_t t = 0; t < threads; ++t) {
      threadIdx = uint3{static_cast<unsigned>(reverse ? threads - 1 - t : t), 0, 0};
      fastint::cuda::fused_step_kernel<M, K, E>(plan.params);
    }
  }
}

}  // namespace

extern "C" {

// Returns the number of blocks launched; *vectorized tells which path the plan chose.
int64_t fastint_cuda_host_fused_step(void* const* outs, const int32_t* out_dtypes, int32_t num_out,
                                     const void* const* ins, const int32_t* in_dtypes, int32_t num_in,
                                     const float* coef, int32_t num_noise, uint32_t counter, int64_t samples,
                                     int64_t per_sample, const int64_t* seeds, int32_t num_blocks_cap,
                                     int32_t reverse, int32_t* vectorized) {
  fastint::FusedStepArgs a;
  memset(&a, 0, sizeof(a));
  for (int n = 0; n < num_in; ++n) {
    a.in[n] = ins[n];
    a.in_dtype[n] = in_dtypes[n];
  }
  for (int m = 0; m < num_out; ++m) {
    a.out[m] = outs[m];
    a.out_dtype[m] = out_dtypes[m];
  }
  for (int j = 0; j < num_out * (num_in + num_noise); ++j) a.coef[j] = coef[j];
  a.num_in = num_in;
  a.num_out = num_out;
  a.num_noise = num_noise;
  a.counter = counter;
  a.samples = samples;
  a.per_sample = per_sample;
  a.seeds = num_noise > 0 ? seeds : nullptr;
  const fastint::cuda::LaunchPlan plan = fastint::cuda::plan_fused_step_launch(a, num_blocks_cap);
  *vectorized = plan.params.vectorized ? 1 : 0;
  if (plan.blocks == 0) return 0;
  fastint::cuda::dispatch_fused_step(plan, [&](auto m, auto k, auto e) {
    run_grid<decltype(m)::value, decltype(k)::value, decltype(e)::value>(plan, reverse != 0);
  });
  return plan.blocks;
}

// Philox4x32-10 of csrc/philox.h as the device compiles it (__umulhi).
void fastint_cuda_host_philox(const uint32_t* counter, const uint32_t* key, uint32_t* words) {
  const fastint::PhiloxWords w =
      fastint::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  words[0] = w.w0;
  words[1] = w.w1;
  words[2] = w.w2;
  words[3] = w.w3;
}

// The device Box-Muller of csrc/philox.h (its __CUDA_ARCH__ branch) on explicit uniforms.
void fastint_cuda_host_box_muller(const float* u_radius, const float* u_angle, int64_t n, float* n_cos,
                                  float* n_sin) {
  for (int64_t i = 0; i < n; ++i) fastint::box_muller(u_radius[i], u_angle[i], &n_cos[i], &n_sin[i]);
}

}  // extern "C"
