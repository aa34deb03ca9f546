// The executor's common step replayed in C++ (fastint/executor.py, REPLAY): between two network calls of a CPU run
// every Python operation pays for the caches the network evicted (a few microseconds each), so a run of steps
// that need no Python of their own runs here, with the network called from this loop.
//
// One step (a fused network evaluation and the combination after it, the executor's STEP):
//
//   F = network(values[input_slot], timestep_batches[t_index])     (the network input was staged by the last step)
//   outs[m] = sum_n C[m, n] values'[in_slots[n]] (+ in-kernel noise)   values' = values with F at f_slot
//   values[out_slots[m]] = outs[m];  values[f_slot] = F if a later step reads F (`keep`), else F is dropped;
//   values[s] = None for each slot s in `release` (the slots this step reads last: freed while warm, and a run holds
//   no more history than its solver reads)
//
// with the executor's rules: F is the network's tensor, the first element of a tuple or list, or `.sample`
// (fastint.models.adapters.output_tensor); a model output that a later step reads (`keep`) is copied when anyone
// but this loop holds it or its storage (a network reusing its output buffer, a view of its input); the op is
// torch.ops.fastint.fused_step through its dispatcher handle (call_fused_step), which checks every tensor before it
// writes anything. A step this loop cannot finish as the Python replay would -- an output that is not a plain
// tensor of the state's dtype, one requiring grad while grad mode is on, a call the op refuses -- stops the loop
// before anything of that step is written and hands the output back: `(stopped, output)`; the executor then runs
// that step and the ones after it in Python, where the checks name the problem. `(len(steps), None)`: all ran.
#include "step_replay.h"

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "fused_step.h"
#include "python_entry.h"

namespace fastint {
namespace {

struct TapeStep {
  Py_ssize_t input_slot = 0, t_index = 0, f_slot = 0;
  bool keep = false;
  int num_in = 0, num_out = 0, num_release = 0;
  Py_ssize_t in_slots[kMaxInputs] = {};
  Py_ssize_t release[kMaxInputs] = {};
  Py_ssize_t out_slots[kMaxOutputs] = {};
  PyObject* out_objects[kMaxOutputs] = {};  // owned references
  at::Tensor outs[kMaxOutputs];
  c10::SmallVector<double, kMaxCoeffs> coeffs;
  std::optional<at::Tensor> seeds;
  int64_t counter = 0, num_noise = 0;
};

struct StepTape {
  std::vector<TapeStep> steps;
  at::ScalarType dtype = at::kFloat;       // the state's: an output of another dtype goes to the Python replay
  Py_ssize_t max_slot = 0, max_t_index = 0;

  ~StepTape() {
    for (TapeStep& s : steps) {
      for (int m = 0; m < s.num_out; ++m) Py_XDECREF(s.out_objects[m]);
    }
  }
};

constexpr const char* kCapsuleName = "fastint.step_tape";

void free_tape(PyObject* capsule) {
  delete static_cast<StepTape*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

bool read_index(PyObject* value, const char* what, Py_ssize_t* out) {
  *out = PyLong_AsSsize_t(value);
  if (*out == -1 && PyErr_Occurred()) return false;
  if (*out < 0) {
    PyErr_Format(PyExc_ValueError, "fastint._C.step_tape: %s must be >= 0, got %zd", what, *out);
    return false;
  }
  return true;
}

// `count` indices of a tuple into `out`; false with a Python exception set otherwise.
bool read_slots(PyObject* seq, const char* what, int least, int limit, Py_ssize_t* out, int* count) {
  if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) < least || PyTuple_GET_SIZE(seq) > limit) {
    PyErr_Format(PyExc_TypeError, "fastint._C.step_tape: %s must be a tuple of %d to %d ints", what, least, limit);
    return false;
  }
  *count = static_cast<int>(PyTuple_GET_SIZE(seq));
  for (int j = 0; j < *count; ++j) {
    if (!read_index(PyTuple_GET_ITEM(seq, j), what, &out[j])) return false;
  }
  return true;
}

bool read_step(PyObject* item, TapeStep* s) {
  if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 12) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.step_tape: each step must be a tuple (input_slot, t_index, f_slot, "
                    "keep, in_slots, outs, coeffs, seeds, counter, num_noise, out_slots, release)");
    return false;
  }
  PyObject* const* f = &PyTuple_GET_ITEM(item, 0);
  if (!read_index(f[0], "input_slot", &s->input_slot) || !read_index(f[1], "t_index", &s->t_index) ||
      !read_index(f[2], "f_slot", &s->f_slot)) {
    return false;
  }
  const int keep = PyObject_IsTrue(f[3]);
  if (keep < 0) return false;
  s->keep = keep == 1;
  if (!read_slots(f[4], "in_slots", 1, kMaxInputs, s->in_slots, &s->num_in) ||
      !read_slots(f[11], "release", 0, kMaxInputs, s->release, &s->num_release)) {
    return false;
  }
  if (!PyList_Check(f[5]) || PyList_GET_SIZE(f[5]) < 1 || PyList_GET_SIZE(f[5]) > kMaxOutputs) {
    PyErr_Format(PyExc_TypeError, "fastint._C.step_tape: outs must be a list of 1 to %d tensors", kMaxOutputs);
    return false;
  }
  int num_slots = 0;
  if (!read_slots(f[10], "out_slots", 1, kMaxOutputs, s->out_slots, &num_slots)) return false;
  if (num_slots != PyList_GET_SIZE(f[5])) {
    PyErr_SetString(PyExc_ValueError, "fastint._C.step_tape: one out_slot per output tensor");
    return false;
  }
  for (int m = 0; m < num_slots; ++m) {
    PyObject* t = PyList_GET_ITEM(f[5], m);
    if (!THPVariable_Check(t)) {
      PyErr_SetString(PyExc_TypeError, "fastint._C.step_tape: outs must hold tensors");
      return false;
    }
    Py_INCREF(t);
    s->out_objects[m] = t;
    s->outs[m] = THPVariable_Unpack(t);
    s->num_out = m + 1;
  }
  if (!PyList_Check(f[6]) || PyList_GET_SIZE(f[6]) > kMaxCoeffs) {
    PyErr_Format(PyExc_TypeError, "fastint._C.step_tape: coeffs must be a list of at most %d floats", kMaxCoeffs);
    return false;
  }
  for (Py_ssize_t j = 0; j < PyList_GET_SIZE(f[6]); ++j) {
    const double c = PyFloat_AsDouble(PyList_GET_ITEM(f[6], j));
    if (c == -1.0 && PyErr_Occurred()) return false;
    s->coeffs.push_back(c);
  }
  if (f[7] != Py_None) {
    if (!THPVariable_Check(f[7])) {
      PyErr_SetString(PyExc_TypeError, "fastint._C.step_tape: seeds must be None or a tensor");
      return false;
    }
    s->seeds = THPVariable_Unpack(f[7]);
  }
  s->counter = PyLong_AsLongLong(f[8]);
  if (s->counter == -1 && PyErr_Occurred()) return false;
  s->num_noise = PyLong_AsLongLong(f[9]);
  return !(s->num_noise == -1 && PyErr_Occurred());
}

// The tensor a network returned (output_tensor's rule) as a new reference, or nullptr when that is not a plain
// torch.Tensor (no Python exception set: the Python replay takes the output as it came and names the problem).
PyObject* plain_output(PyObject* out) {
  PyObject* f = nullptr;
  if (THPVariable_Check(out)) {
    f = out;
    Py_INCREF(f);
  } else if ((PyTuple_Check(out) || PyList_Check(out)) && PySequence_Fast_GET_SIZE(out) > 0) {
    f = PySequence_Fast_GET_ITEM(out, 0);
    Py_INCREF(f);
  } else {
    f = PyObject_GetAttrString(out, "sample");
    if (f == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
  }
  if (!THPVariable_CheckExact(f)) {
    Py_DECREF(f);
    return nullptr;
  }
  return f;
}

PyObject* stopped_at(Py_ssize_t index, PyObject* output) {  // steals `output` (nullptr: None)
  PyObject* result = Py_BuildValue("(nO)", index, output != nullptr ? output : Py_None);
  Py_XDECREF(output);
  return result;
}

}  // namespace

PyObject* step_tape_fastcall(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 1 || !PyList_Check(args[0]) || PyList_GET_SIZE(args[0]) < 1) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.step_tape(steps) takes one non-empty list of step tuples");
    return nullptr;
  }
  auto tape = std::make_unique<StepTape>();
  const Py_ssize_t n = PyList_GET_SIZE(args[0]);
  tape->steps.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    TapeStep& s = tape->steps[i];
    if (!read_step(PyList_GET_ITEM(args[0], i), &s)) return nullptr;
    tape->max_slot = std::max({tape->max_slot, s.input_slot, s.f_slot});
    for (int j = 0; j < s.num_in; ++j) tape->max_slot = std::max(tape->max_slot, s.in_slots[j]);
    for (int m = 0; m < s.num_out; ++m) tape->max_slot = std::max(tape->max_slot, s.out_slots[m]);
    for (int j = 0; j < s.num_release; ++j) tape->max_slot = std::max(tape->max_slot, s.release[j]);
    tape->max_t_index = std::max(tape->max_t_index, s.t_index);
  }
  tape->dtype = tape->steps[0].outs[0].scalar_type();
  PyObject* capsule = PyCapsule_New(tape.get(), kCapsuleName, &free_tape);
  if (capsule != nullptr) tape.release();
  return capsule;
  END_HANDLE_TH_ERRORS
}

PyObject* replay_steps_fastcall(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 4) {
    PyErr_Format(PyExc_TypeError, "fastint._C.replay_steps(tape, values, network, timestep_batches) takes 4 "
                 "arguments, got %zd", nargs);
    return nullptr;
  }
  auto* tape = static_cast<StepTape*>(PyCapsule_GetPointer(args[0], kCapsuleName));
  if (tape == nullptr) return nullptr;
  PyObject* values = args[1];
  PyObject* network = args[2];
  PyObject* batches = args[3];
  if (!PyList_Check(values) || PyList_GET_SIZE(values) <= tape->max_slot) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.replay_steps: values must be a list holding every slot of the tape");
    return nullptr;
  }
  if ((!PyList_Check(batches) && !PyTuple_Check(batches)) || PySequence_Fast_GET_SIZE(batches) <= tape->max_t_index) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.replay_steps: timestep_batches must be a list or tuple holding every "
                    "timestep batch of the tape");
    return nullptr;
  }
  if (!PyCallable_Check(network)) {
    PyErr_SetString(PyExc_TypeError, "fastint._C.replay_steps: network must be callable");
    return nullptr;
  }
  const Py_ssize_t n = static_cast<Py_ssize_t>(tape->steps.size());
  for (Py_ssize_t i = 0; i < n; ++i) {
    const TapeStep& s = tape->steps[i];
    PyObject* call_args[2] = {PyList_GET_ITEM(values, s.input_slot), PySequence_Fast_GET_ITEM(batches, s.t_index)};
    THPObjectPtr out(PyObject_Vectorcall(network, call_args, 2, nullptr));
    if (!out) return nullptr;
    THPObjectPtr f(plain_output(out.get()));
    if (!f) return stopped_at(i, out.release());
    out = nullptr;  // (a wrapper holding the output lets go of it here, before its references are counted)
    const at::Tensor* ft = &THPVariable_Unpack(f.get());
    if (ft->scalar_type() != tape->dtype || (ft->requires_grad() && at::GradMode::is_enabled())) {
      return stopped_at(i, f.release());
    }
    if (s.keep && (Py_REFCNT(f.get()) > 1 || (ft->has_storage() && ft->storage().use_count() > 1))) {
      THPObjectPtr copy(THPVariable_Wrap(ft->clone(at::MemoryFormat::Contiguous)));
      if (!copy) return nullptr;
      f = std::move(copy);
      ft = &THPVariable_Unpack(f.get());
    }
    c10::SmallVector<at::Tensor, kMaxInputs> inputs;
    for (int j = 0; j < s.num_in; ++j) {
      PyObject* value = s.in_slots[j] == s.f_slot ? f.get() : PyList_GET_ITEM(values, s.in_slots[j]);
      if (!THPVariable_Check(value)) {
        PyErr_Format(PyExc_TypeError, "fastint._C.replay_steps: slot %zd holds no tensor", s.in_slots[j]);
        return nullptr;
      }
      inputs.push_back(THPVariable_Unpack(value));
    }
    try {
      call_fused_step(at::TensorList(s.outs, s.num_out), inputs, s.coeffs, s.seeds, s.counter, s.num_noise);
    } catch (const std::exception&) {  // refused before anything was written: the Python replay names the problem
      PyErr_Clear();
      return stopped_at(i, f.release());
    }
    if (s.keep) PyList_SetItem(values, s.f_slot, f.release());  // (else freed here, while its memory is warm)
    for (int m = 0; m < s.num_out; ++m) {
      Py_INCREF(s.out_objects[m]);
      PyList_SetItem(values, s.out_slots[m], s.out_objects[m]);
    }
    for (int j = 0; j < s.num_release; ++j) PyList_SetItem(values, s.release[j], Py_NewRef(Py_None));
  }
  return stopped_at(n, nullptr);
  END_HANDLE_TH_ERRORS
}

}  // namespace fastint
