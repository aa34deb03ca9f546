// Op schemas of the fastint extension (TORCH_LIBRARY), the shared argument checks, a test-only Philox hook and the
// Python module init. The fake (meta) implementations are registered in Python (fastint/ops/extension.py).
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <string>

#include "cxx_runtime.h"
#include "ops.h"
#include "philox.h"
#include "python_entry.h"
#include "step_replay.h"

#ifndef FASTINT_TORCH_VERSION
#define FASTINT_TORCH_VERSION "unknown"
#endif

extern "C" {
// `import fastint._C` loads this library so that the static TORCH_LIBRARY registrations run; the ops are reached
// through torch.ops.fastint, and the module has the fast Python entry `fused_step`, `all_finite` and `use_counts`
// (python_entry.cpp), and the executor's step replay `step_tape` and `replay_steps` (step_replay.cpp).
PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"fused_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&fastint::fused_step_fastcall)),
       METH_FASTCALL, "fused_step(outs, inputs, coeffs, seeds, counter, num_noise): torch.ops.fastint.fused_step "
                      "without the boxed argument path"},
      {"all_finite", &fastint::all_finite_call, METH_O,
       "all_finite(tensor) -> bool: whether every element is finite (a contiguous CPU float tensor is scanned "
       "in place)"},
      {"use_counts", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&fastint::use_counts_fastcall)),
       METH_FASTCALL, "use_counts(tensor) -> (int, int): references to the tensor object and to its storage; "
                      "use_counts(tensor, references, storage) -> bool: whether either count exceeds the given one"},
      {"step_tape", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&fastint::step_tape_fastcall)),
       METH_FASTCALL, "step_tape(steps) -> tape: the executor's steps for replay_steps (csrc/step_replay.cpp)"},
      {"replay_steps",
       reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(&fastint::replay_steps_fastcall)),
       METH_FASTCALL, "replay_steps(tape, values, network, timestep_batches) -> (stopped, output): run the tape's "
                      "steps, calling the network, until one needs the Python replay (csrc/step_replay.cpp)"},
      {nullptr, nullptr, 0, nullptr}};
  const std::string private_runtime = fastint::private_cxx_runtime_reason();
  if (!private_runtime.empty()) {  // refuse a build that would crash on its first error message (cxx_runtime.cpp)
    PyErr_SetString(PyExc_ImportError, private_runtime.c_str());
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastint compiled kernels (torch.ops.fastint)",
                                          -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
    PyModule_AddStringConstant(module, "TORCH_VERSION", FASTINT_TORCH_VERSION);
#if defined(FASTINT_WITH_CUDA)
    PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
    PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  }
  return module;
}
}

namespace fastint {

namespace {

int32_t dtype_code(const at::Tensor& t, const char* what, size_t i) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return kFloat32;
    case at::kHalf:
      return kFloat16;
    case at::kBFloat16:
      return kBFloat16;
    default:
      TORCH_CHECK(false, "fastint::fused_step: ", what, " ", i, " has dtype ", t.scalar_type(),
                  "; the compiled kernels take float32, float16 and bfloat16");
  }
  return kFloat32;
}

// The address of a tensor's first element; nullptr for a tensor without addressable memory (meta, or a fake or
// functional tensor while torch.compile traces: nothing is written then).
const void* address_of(const at::Tensor& t) {
  if (t.is_meta() || !t.has_storage()) return nullptr;
  try {
    return t.data_ptr();
  } catch (const c10::Error&) {
    return nullptr;
  }
}

// The bytes a tensor's elements occupy: [lo, hi), its element size and whether it is contiguous. A tensor without
// addressable memory (address_of is nullptr) gets an empty extent at 0, which overlaps nothing.
struct Extent {
  uintptr_t lo = 0, hi = 0;
  int64_t element_size = 0;
  bool contiguous = false;
};

Extent extent_of(const at::Tensor& t) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(address_of(t));
  if (base == 0 || t.numel() == 0) return {};
  int64_t low = 0, high = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t extent = (t.size(d) - 1) * t.stride(d);
    (extent < 0 ? low : high) += extent;
  }
  const int64_t size = static_cast<int64_t>(t.element_size());
  return {base + low * size, base + (high + 1) * size, size, t.is_contiguous()};
}

// A contiguous tensor of `numel` elements at `address` (the kernels' tensors, once make_fused_step_args checked them).
Extent contiguous_extent(const void* address, int64_t numel, int64_t element_size) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(address);
  if (base == 0 || numel == 0) return {};
  return {base, base + static_cast<uintptr_t>(numel * element_size), element_size, true};
}

bool overlaps(const Extent& a, const Extent& b) { return a.lo < b.hi && b.lo < a.hi; }

// Exactly the same elements: an in-place update.
bool same_elements(const Extent& a, const Extent& b) {
  return a.lo == b.lo && a.hi == b.hi && a.element_size == b.element_size && a.contiguous && b.contiguous;
}

void check_coefficients(c10::ArrayRef<double> coeffs) {
  for (size_t j = 0; j < coeffs.size(); ++j) {
    TORCH_CHECK_VALUE(std::isfinite(coeffs[j]) && std::fabs(coeffs[j]) <= static_cast<double>(FLT_MAX),
                      "fastint::fused_step: coefficient ", j, " = ", coeffs[j], " is not a finite float32 value "
                      "(|c| <= ", FLT_MAX, " and not NaN)");
  }
}

void check_memory(const Extent* outs, size_t num_out, const Extent* inputs, size_t num_in) {
  for (size_t m = 0; m < num_out; ++m) {
    for (size_t j = 0; j < m; ++j) {
      TORCH_CHECK_VALUE(!overlaps(outs[m], outs[j]), "fastint::fused_step: outputs ", j, " and ", m, " overlap in "
                        "memory (the same tensor, or views of one buffer); pass distinct output tensors");
    }
    for (size_t i = 0; i < num_in; ++i) {
      TORCH_CHECK_VALUE(same_elements(outs[m], inputs[i]) || !overlaps(outs[m], inputs[i]), "fastint::fused_step: "
                        "output ", m, " partially overlaps input ", i, "; an output may only alias an input exactly "
                        "(same memory, shape and dtype: an in-place update) or not at all");
    }
  }
}

}  // namespace

void check_fused_step_call(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs) {
  check_coefficients(coeffs);
  TORCH_CHECK(outs.size() <= kMaxOutputs && inputs.size() <= kMaxInputs, "fastint::fused_step: 1 to ", kMaxInputs,
              " inputs and 1 to ", kMaxOutputs, " outputs, got ", inputs.size(), " and ", outs.size());
  Extent out_extents[kMaxOutputs], in_extents[kMaxInputs];
  for (size_t m = 0; m < outs.size(); ++m) out_extents[m] = extent_of(outs[m]);
  for (size_t i = 0; i < inputs.size(); ++i) in_extents[i] = extent_of(inputs[i]);
  check_memory(out_extents, outs.size(), in_extents, inputs.size());
}

FusedStepArgs make_fused_step_args(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                                   const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise,
                                   c10::DeviceType device) {
  const int64_t n_in = static_cast<int64_t>(inputs.size());
  const int64_t n_out = static_cast<int64_t>(outs.size());
  TORCH_CHECK(n_in >= 1 && n_in <= kMaxInputs, "fastint::fused_step: 1 to ", kMaxInputs, " inputs, got ", n_in);
  TORCH_CHECK(n_out >= 1 && n_out <= kMaxOutputs, "fastint::fused_step: 1 to ", kMaxOutputs, " outputs, got ", n_out);
  TORCH_CHECK(num_noise >= 0 && num_noise <= kMaxNoise, "fastint::fused_step: num_noise in [0, ", kMaxNoise,
              "], got ", num_noise);
  TORCH_CHECK(static_cast<int64_t>(coeffs.size()) == n_out * (n_in + num_noise),
              "fastint::fused_step: expected M * (N + K) = ", n_out * (n_in + num_noise), " coefficients, got ",
              coeffs.size());
  TORCH_CHECK(counter >= 0 && counter < (int64_t(1) << 30), "fastint::fused_step: counter in [0, 2**30), got ",
              counter);
  FusedStepArgs a;
  memset(&a, 0, sizeof(a));
  const at::Tensor& ref = inputs[0];
  for (int64_t i = 0; i < n_in; ++i) {
    const at::Tensor& t = inputs[i];
    TORCH_CHECK(t.device().type() == device, "fastint::fused_step: input ", i, " is on ", t.device());
    TORCH_CHECK(t.device() == ref.device(), "fastint::fused_step: inputs on different devices");
    TORCH_CHECK(t.sizes() == ref.sizes(), "fastint::fused_step: input ", i, " has shape ", t.sizes(), ", input 0 ",
                ref.sizes());
    TORCH_CHECK(t.is_contiguous(), "fastint::fused_step: input ", i, " is not contiguous");
    a.in[i] = t.data_ptr();
    a.in_dtype[i] = dtype_code(t, "input", i);
  }
  for (int64_t m = 0; m < n_out; ++m) {
    const at::Tensor& o = outs[m];
    TORCH_CHECK(o.device() == ref.device(), "fastint::fused_step: output ", m, " is on ", o.device(),
                ", inputs on ", ref.device());
    TORCH_CHECK(o.sizes() == ref.sizes(), "fastint::fused_step: output ", m, " has shape ", o.sizes(),
                ", inputs ", ref.sizes());
    TORCH_CHECK(o.is_contiguous(), "fastint::fused_step: output ", m, " is not contiguous");
    a.out[m] = o.data_ptr();
    a.out_dtype[m] = dtype_code(o, "output", m);
  }
  // every tensor is contiguous and shaped like input 0 (checked above): their extents follow from the addresses
  check_coefficients(coeffs);
  const int64_t numel = ref.numel();
  Extent out_extents[kMaxOutputs], in_extents[kMaxInputs];
  for (int64_t m = 0; m < n_out; ++m) out_extents[m] = contiguous_extent(a.out[m], numel, outs[m].element_size());
  for (int64_t i = 0; i < n_in; ++i) in_extents[i] = contiguous_extent(a.in[i], numel, inputs[i].element_size());
  check_memory(out_extents, n_out, in_extents, n_in);
  for (size_t j = 0; j < coeffs.size(); ++j) a.coef[j] = static_cast<float>(coeffs[j]);
  a.num_in = static_cast<int32_t>(n_in);
  a.num_out = static_cast<int32_t>(n_out);
  a.num_noise = static_cast<int32_t>(num_noise);
  a.counter = static_cast<uint32_t>(counter);
  a.samples = ref.dim() > 0 ? ref.size(0) : 1;
  a.per_sample = a.samples > 0 ? ref.numel() / a.samples : 0;
  TORCH_CHECK(a.per_sample <= (int64_t(1) << 34), "fastint::fused_step: at most 2**34 elements per sample");
  a.seeds = nullptr;
  if (num_noise > 0) {
    TORCH_CHECK(seeds.has_value() && seeds->defined(), "fastint::fused_step: in-kernel noise needs seeds");
    const at::Tensor& s = *seeds;
    TORCH_CHECK(s.scalar_type() == at::kLong && s.dim() == 1 && s.is_contiguous(),
                "fastint::fused_step: seeds must be a contiguous 1-D int64 tensor");
    TORCH_CHECK(s.numel() == a.samples, "fastint::fused_step: ", s.numel(), " seeds for ", a.samples, " samples");
    TORCH_CHECK(s.device() == ref.device(), "fastint::fused_step: seeds on ", s.device(), ", tensors on ",
                ref.device());
    a.seeds = s.const_data_ptr<int64_t>();
  }
  return a;
}

namespace {

// Test hook: the raw Philox words of stream `stream` at `counter` for the first ceil(n / 4) groups of each seed,
// as int64 (uint32 values), shape (S, groups, 4). Lets the tests compare integers bit for bit.
at::Tensor philox_words_cpu(const at::Tensor& seeds, int64_t counter, int64_t stream, int64_t n) {
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1, "philox_words: 1-D int64 seeds");
  TORCH_CHECK(stream >= 0 && stream < kMaxStreams && counter >= 0 && n >= 0, "philox_words: bad arguments");
  const at::Tensor s = seeds.contiguous();
  const int64_t groups = (n + 3) / 4;
  at::Tensor out = at::empty({s.numel(), groups, 4}, s.options());
  const int64_t* sp = s.const_data_ptr<int64_t>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < s.numel(); ++b) {
    for (int64_t g = 0; g < groups; ++g) {
      const PhiloxWords w = philox_group(static_cast<uint64_t>(sp[b]), static_cast<uint32_t>(counter),
                                         static_cast<uint32_t>(stream), static_cast<uint32_t>(g));
      int64_t* row = op + (b * groups + g) * 4;
      row[0] = w.w0;
      row[1] = w.w1;
      row[2] = w.w2;
      row[3] = w.w3;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(fastint, m) {
  m.def("fused_step(Tensor(a!)[] outs, Tensor[] inputs, float[] coeffs, Tensor? seeds, int counter, "
        "int num_noise) -> ()");
  m.def("philox_words(Tensor seeds, int counter, int stream, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastint, CPU, m) {
  m.impl("philox_words", &philox_words_cpu);
}

}  // namespace fastint
