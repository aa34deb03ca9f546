// Python fast entries: fastint::fused_step, fastint::all_finite and fastint::use_counts (see python_entry.cpp).
#pragma once

#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace fastint {

// torch.ops.fastint.fused_step on unpacked arguments, through the same typed dispatcher handle; called with the GIL
// held, it releases it while the op runs except for CPU work on fewer than 2**15 elements (see releases_gil).
void call_fused_step(at::TensorList outs, at::TensorList inputs, c10::ArrayRef<double> coeffs,
                     const std::optional<at::Tensor>& seeds, int64_t counter, int64_t num_noise);

// fastint._C.fused_step(outs, inputs, coeffs, seeds, counter, num_noise): METH_FASTCALL.
PyObject* fused_step_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

// fastint._C.all_finite(tensor) -> bool: METH_O (all_finite.h).
PyObject* all_finite_call(PyObject* self, PyObject* tensor);

// fastint._C.use_counts(tensor) -> (Python references to the tensor object, references to its storage), and
// use_counts(tensor, references, storage) -> whether either count exceeds the given one: METH_FASTCALL. The
// executor's test whether anyone besides itself holds a model output (without making a Python storage object).
PyObject* use_counts_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace fastint
