// CPU implementation of fastint::fused_step: argument checks, at::parallel_for over tiles of one sample (without
// noise the step is elementwise and the whole tensor is one sample: many small samples, e.g. (20000, 2) points, are
// then a few tiles instead of one call per sample), and the run-time choice of the tile kernel for this CPU
// (fused_step_{default,avx2,avx512}.cpp, see fused_step_impl.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "../ops.h"
#include "fused_step_kernel.h"

namespace fastint {
namespace cpu {
namespace {

// Same capability as ATen's own kernels (honours ATEN_CPU_CAPABILITY), limited to what this build compiled.
TileFn select_tile_fn() {
  const std::string cap = at::get_cpu_capability();
#if defined(FASTINT_HAVE_AVX512)
  if (cap == "AVX512") return &fused_step_tile_avx512;
#endif
#if defined(FASTINT_HAVE_AVX2)
  if (cap == "AVX2" || cap == "AVX512") return &fused_step_tile_avx2;
#endif
  return &fused_step_tile_default;
}

TileFn tile_fn() {
  static const TileFn fn = select_tile_fn();
  return fn;
}

constexpr int64_t kChunk = 8 * kTile;        // elements per work item (dynamically scheduled)
constexpr int64_t kSerialBelow = 1 << 15;    // smaller calls stay on the calling thread

void fused_step_cpu(at::TensorList outs, at::TensorList inputs, at::ArrayRef<double> coeffs,
                    const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  FusedStepArgs args = make_fused_step_args(outs, inputs, coeffs, seeds, counter, num_noise, c10::kCPU);
  if (args.samples == 0 || args.per_sample == 0) return;
  if (args.num_noise == 0) {  // elementwise: one sample of all elements (a tile per sample is slow for small samples)
    args.per_sample *= args.samples;
    args.samples = 1;
  }
  const TileFn fn = tile_fn();
  const int64_t chunk = std::min(kChunk, (args.per_sample + 3) / 4 * 4);
  const int64_t chunks_per_sample = (args.per_sample + chunk - 1) / chunk;
  const int64_t total = args.samples * chunks_per_sample;
  auto run_chunk = [&](int64_t i) {
    const int64_t b = i / chunks_per_sample;
    const int64_t start = (i - b * chunks_per_sample) * chunk;
    const int64_t stop = std::min(start + chunk, args.per_sample);
    for (int64_t e = start; e < stop; e += kTile) fn(args, b, e, std::min(kTile, stop - e));
  };
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || total * chunk < kSerialBelow || total < 2 || at::in_parallel_region()) {
    for (int64_t i = 0; i < total; ++i) run_chunk(i);
    return;
  }
  // Dynamic schedule: one worker per thread pulls chunks from a shared counter, so a thread whose core is busy
  // with other work does not hold up the step (at::parallel_for alone splits the range statically).
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, total), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < total;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        run_chunk(i);
      }
    }
  });
}

// Which tile kernel runs here (for tests and benchmarks).
std::string cpu_kernel_capability() {
  const TileFn fn = tile_fn();
#if defined(FASTINT_HAVE_AVX512)
  if (fn == &fused_step_tile_avx512) return "AVX512";
#endif
#if defined(FASTINT_HAVE_AVX2)
  if (fn == &fused_step_tile_avx2) return "AVX2";
#endif
  return "DEFAULT";
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(fastint, m) {
  m.def("cpu_kernel_capability() -> str", &cpu::cpu_kernel_capability);
}

TORCH_LIBRARY_IMPL(fastint, CPU, m) {
  m.impl("fused_step", &cpu::fused_step_cpu);
}

}  // namespace fastint
