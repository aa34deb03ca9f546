// Whether every element of a tensor is finite, without the dispatcher's per-op cost for small CPU tensors.
#pragma once

#include <ATen/ATen.h>

namespace fastint {

// A contiguous CPU float32/float64/float16/bfloat16 tensor is scanned in place (an element is NaN or infinite
// exactly when its exponent bits are all ones); any other tensor goes through at::isfinite(t).all().
bool all_finite(const at::Tensor& t);

}  // namespace fastint
