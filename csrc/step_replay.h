// The executor's steps replayed in C++: `fastint._C.step_tape` and `fastint._C.replay_steps` (step_replay.cpp).
#pragma once

#include <Python.h>

namespace fastint {

// fastint._C.step_tape(steps) -> tape: METH_FASTCALL. Each step a tuple (input_slot, t_index, f_slot, keep,
// in_slots, outs, coeffs, seeds, counter, num_noise, out_slots, release); see step_replay.cpp.
PyObject* step_tape_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

// fastint._C.replay_steps(tape, values, network, timestep_batches) -> (stopped, output): METH_FASTCALL.
PyObject* replay_steps_fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace fastint
