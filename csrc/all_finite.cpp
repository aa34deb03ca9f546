// fastint::all_finite (see all_finite.h).
//
// IEEE 754: a value is NaN or +-inf exactly when all its exponent bits are set, i.e. (bits & mask) == mask with
// mask = 0x7f800000 (float32), 0x7ff0000000000000 (float64), 0x7c00 (float16), 0x7f80 (bfloat16). The scan ORs that
// test over chunks of the raw words (a loop the compiler vectorises), in parallel over chunks of 64K elements.
#include "all_finite.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

namespace fastint {
namespace {

template <typename Word>
bool words_finite(const at::Tensor& t, Word mask) {
  const Word* words = static_cast<const Word*>(t.const_data_ptr());
  std::atomic<bool> finite{true};
  at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) bad |= (words[i] & mask) == mask;
    if (bad) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load(std::memory_order_relaxed);
}

}  // namespace

bool all_finite(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg() && t.layout() == at::kStrided) {
    switch (t.scalar_type()) {
      case at::kFloat:
        return words_finite<uint32_t>(t, 0x7f800000u);
      case at::kDouble:
        return words_finite<uint64_t>(t, 0x7ff0000000000000ull);
      case at::kHalf:
        return words_finite<uint16_t>(t, 0x7c00u);
      case at::kBFloat16:
        return words_finite<uint16_t>(t, 0x7f80u);
      default:
        break;
    }
  }
  return at::isfinite(t).all().item<bool>();
}

}  // namespace fastint
