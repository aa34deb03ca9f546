// Python fast entries: fastint::fused_step and fastint::all_finite (see python_entry.cpp).
#pragma once

#include <Python.h>

namespace fastint {

// fastint._C.fused_step(outs, inputs, coeffs, seeds, counter, num_noise): METH_FASTCALL.
PyObject* fused_step_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

// fastint._C.all_finite(tensor) -> bool: METH_O (all_finite.h).
PyObject* all_finite_call(PyObject* self, PyObject* tensor);

}  // namespace fastint
