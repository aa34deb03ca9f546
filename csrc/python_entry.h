// Python fast entry to fastint::fused_step (see python_entry.cpp).
#pragma once

#include <Python.h>

namespace fastint {

// fastint._C.fused_step(outs, inputs, coeffs, seeds, counter, num_noise): METH_FASTCALL.
PyObject* fused_step_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace fastint
