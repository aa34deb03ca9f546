// The Autograd kernel of fastint::fused_step, the out=/in-place op of the compiled kernels:
//
//   out[m] = sum_n C[m, n] in[n] + sum_k C[m, N + k] z_k,        grad_in[n] = sum_m C[m, n] grad_out[m]
//
// Without grad (grad mode off, or no input or output requiring grad) the call goes straight to the device kernel
// (below autograd, unboxed) and the outputs' version counters are bumped, as for any in-place op. With grad, the
// call is checked (ops.h), a leaf that requires grad is refused as an output (torch's rule for in-place writes),
// the functional op fastint::fused_step_functional (registered from Python, fastint/ops/autograd.py, whose backward
// is the transposed fused step) computes fresh outputs on the same kernels, and Tensor::copy_ writes them into
// `outs`, which records the in-place update for autograd. torch.ops.fastint.fused_step and the fast entry
// fastint._C.fused_step both reach this kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "ops.h"

namespace fastint {
namespace {

using FusedStepFn = void(at::TensorList, at::TensorList, c10::ArrayRef<double>, const std::optional<at::Tensor>&,
                         int64_t, int64_t);

bool records_grad(at::TensorList outs, at::TensorList inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor& t : inputs) {
    if (t.requires_grad()) return true;
  }
  for (const at::Tensor& t : outs) {
    if (t.requires_grad()) return true;
  }
  return false;
}

void fused_step_with_grad(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                          const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  check_fused_step_call(outs, inputs, coeffs);
  for (size_t m = 0; m < outs.size(); ++m) {
    TORCH_CHECK(!(outs[m].is_leaf() && outs[m].requires_grad()), "fastint::fused_step: output ", m,
                " is a leaf tensor that requires grad; writing into it would lose its gradient (torch refuses "
                "in-place writes into such leaves). Pass fresh outputs, a tensor that does not require grad, or "
                "call under torch.no_grad()");
  }
  const auto functional = c10::Dispatcher::singleton().findSchema({"fastint::fused_step_functional", ""});
  TORCH_CHECK(functional.has_value(), "fastint::fused_step: gradients need fastint::fused_step_functional, which "
              "`import fastint` registers (fastint/ops/autograd.py)");
  torch::jit::Stack stack;
  stack.emplace_back(inputs.vec());
  stack.emplace_back(coeffs.vec());
  stack.emplace_back(seeds);
  stack.emplace_back(counter);
  stack.emplace_back(num_noise);
  stack.emplace_back(static_cast<int64_t>(outs.size()));
  stack.emplace_back(std::string(inputs[0].is_cuda() ? "cuda" : "cpp"));
  functional->callBoxed(&stack);
  const std::vector<at::Tensor> results = stack.at(0).toTensorVector();
  for (size_t m = 0; m < outs.size(); ++m) outs[m].copy_(results[m]);
}

void fused_step_autograd(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                         const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  if (records_grad(outs, inputs)) {
    fused_step_with_grad(outs, inputs, coeffs, seeds, counter, num_noise);
    return;
  }
  static const c10::TypedOperatorHandle<FusedStepFn> op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastint::fused_step", "").typed<FusedStepFn>();
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.call(outs, inputs, coeffs, seeds, counter, num_noise);
  }
  for (const at::Tensor& o : outs) torch::autograd::increment_version(o);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastint, Autograd, m) {
  m.impl("fused_step", &fused_step_autograd);
}

}  // namespace fastint
