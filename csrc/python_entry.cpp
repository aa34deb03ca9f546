// Python fast entry to fastint::fused_step: `fastint._C.fused_step(outs, inputs, coeffs, seeds, counter, num_noise)`.
//
// Same op, same kernels, same dispatch as `torch.ops.fastint.fused_step.default(...)` (the call goes through a typed
// dispatcher handle, so inference mode, the autograd fallback, dispatch modes and the profiler see it as before),
// without the generic boxed argument path: the arguments are read with the CPython API (lists or tuples of tensors,
// a list of floats, None or a tensor, two ints) and handed to the kernel unboxed. The sampling loop uses it for
// calls of a kind already validated (fastint/ops/extension.py); the op's own checks (ops.cpp: devices, shapes,
// dtypes, layout, overlap, coefficients) still run, and the op's Autograd kernel (autograd.cpp) records the call
// whenever grad mode is on and a tensor of it requires grad.
#include "python_entry.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/SmallVector.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

#include "all_finite.h"
#include "fused_step.h"

namespace fastint {
namespace {

using FusedStepFn = void(at::TensorList, at::TensorList, c10::ArrayRef<double>, const std::optional<at::Tensor>&,
                         int64_t, int64_t);

const c10::TypedOperatorHandle<FusedStepFn>& fused_step_op() {
  static const c10::TypedOperatorHandle<FusedStepFn> handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastint::fused_step", "").typed<FusedStepFn>();
  return handle;
}

using Tensors = c10::SmallVector<at::Tensor, kMaxInputs>;

// The tensors of a list or tuple (1 to `limit` of them); false with a Python exception set otherwise.
bool unpack_tensors(PyObject* seq, const char* what, Py_ssize_t limit, Tensors* out) {
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
    PyErr_Format(PyExc_TypeError, "fastint._C.fused_step: %s must be a list or tuple of tensors", what);
    return false;
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  if (n < 1 || n > limit) {
    PyErr_Format(PyExc_ValueError, "fastint._C.fused_step: 1 to %zd %s, got %zd", limit, what, n);
    return false;
  }
  PyObject** items = PySequence_Fast_ITEMS(seq);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!THPVariable_Check(items[i])) {
      PyErr_Format(PyExc_TypeError, "fastint._C.fused_step: %s[%zd] is a %s, not a tensor", what, i,
                   Py_TYPE(items[i])->tp_name);
      return false;
    }
    out->push_back(THPVariable_Unpack(items[i]));
  }
  return true;
}

// An int argument as long long; false with a Python exception naming the argument and its range otherwise.
bool unpack_int(PyObject* value, const char* what, const char* range, long long* out) {
  *out = PyLong_AsLongLong(value);
  if (*out != -1 || !PyErr_Occurred()) return true;
  if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "fastint._C.fused_step: %s must be an int in %s, got %R", what, range, value);
  }
  return false;
}

// Whether a call on tensors like `t` releases the GIL while it runs, as torch's own ops do: always, except for CPU
// work on fewer than 2**15 elements (a few microseconds on the calling thread), where releasing and retaking the
// GIL would cost as much as the work with the caches a network leaves between two calls.
bool releases_gil(const at::Tensor& t) {
  constexpr int64_t kKeepBelow = int64_t(1) << 15;
  return !t.is_cpu() || t.numel() >= kKeepBelow;
}

}  // namespace

void call_fused_step(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                     const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise) {
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (releases_gil(inputs[0])) no_gil.emplace();
  fused_step_op().call(outs, inputs, coeffs, seeds, counter, num_noise);
}

PyObject* fused_step_fastcall(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 6) {
    PyErr_Format(PyExc_TypeError,
                 "fastint._C.fused_step(outs, inputs, coeffs, seeds, counter, num_noise) takes 6 arguments, got %zd",
                 nargs);
    return nullptr;
  }
  Tensors outs, inputs;
  if (!unpack_tensors(args[0], "outs", kMaxOutputs, &outs) || !unpack_tensors(args[1], "inputs", kMaxInputs, &inputs)) {
    return nullptr;
  }
  PyObject* coeff_seq = args[2];
  if (!PyList_Check(coeff_seq) && !PyTuple_Check(coeff_seq)) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.fused_step: coeffs must be a list or tuple of floats");
    return nullptr;
  }
  const Py_ssize_t num_coeffs = PySequence_Fast_GET_SIZE(coeff_seq);
  if (num_coeffs > kMaxCoeffs) {
    PyErr_Format(PyExc_ValueError, "fastint._C.fused_step: at most %d coefficients, got %zd", kMaxCoeffs, num_coeffs);
    return nullptr;
  }
  c10::SmallVector<double, kMaxCoeffs> coeffs;
  PyObject** coeff_items = PySequence_Fast_ITEMS(coeff_seq);
  for (Py_ssize_t j = 0; j < num_coeffs; ++j) {
    const double v = PyFloat_AsDouble(coeff_items[j]);
    if (v == -1.0 && PyErr_Occurred()) return nullptr;
    coeffs.push_back(v);
  }
  std::optional<at::Tensor> seeds;
  if (args[3] != Py_None) {
    if (!THPVariable_Check(args[3])) {
      PyErr_SetString(PyExc_TypeError, "fastint._C.fused_step: seeds must be None or an int64 tensor");
      return nullptr;
    }
    seeds = THPVariable_Unpack(args[3]);
  }
  long long counter = 0, num_noise = 0;
  if (!unpack_int(args[4], "counter", "[0, 2**30)", &counter) ||
      !unpack_int(args[5], "num_noise", "[0, 4]", &num_noise)) {
    return nullptr;
  }
  call_fused_step(outs, inputs, coeffs, seeds, counter, num_noise);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* all_finite_call(PyObject* /*self*/, PyObject* tensor) {
  HANDLE_TH_ERRORS
  if (!THPVariable_Check(tensor)) {
    PyErr_Format(PyExc_TypeError, "fastint._C.all_finite: expected a tensor, got %s", Py_TYPE(tensor)->tp_name);
    return nullptr;
  }
  const at::Tensor& t = THPVariable_Unpack(tensor);
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (releases_gil(t)) no_gil.emplace();
  const bool finite = all_finite(t);
  no_gil.reset();
  if (finite) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
  END_HANDLE_TH_ERRORS
}

PyObject* use_counts_fastcall(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 1 && nargs != 3) {
    PyErr_Format(PyExc_TypeError, "fastint._C.use_counts(tensor[, references, storage]) takes 1 or 3 arguments, "
                 "got %zd", nargs);
    return nullptr;
  }
  PyObject* tensor = args[0];
  if (!THPVariable_Check(tensor)) {
    PyErr_Format(PyExc_TypeError, "fastint._C.use_counts: expected a tensor, got %s", Py_TYPE(tensor)->tp_name);
    return nullptr;
  }
  const at::Tensor& t = THPVariable_Unpack(tensor);
  const Py_ssize_t references = Py_REFCNT(tensor);
  const Py_ssize_t storage = t.has_storage() ? static_cast<Py_ssize_t>(t.storage().use_count()) : 0;
  if (nargs == 1) return Py_BuildValue("(nn)", references, storage);
  const Py_ssize_t reference_limit = PyLong_AsSsize_t(args[1]);
  if (reference_limit == -1 && PyErr_Occurred()) return nullptr;
  const Py_ssize_t storage_limit = PyLong_AsSsize_t(args[2]);
  if (storage_limit == -1 && PyErr_Occurred()) return nullptr;
  if (references > reference_limit || storage > storage_limit) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
  END_HANDLE_TH_ERRORS
}

}  // namespace fastint
