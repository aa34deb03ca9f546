"""The executor: the one place where a sampling run touches tensors.

Every solver is a host program (``fastint.solvers.program``). A run is

1. **recorded**: the program runs once with integer handles (``program.record``): the requests never depend on
   tensor values, so the recording is the whole run; it is memoised per (solver, options, sigmas);
2. **lowered** for the model at hand (``_lower``, memoised per adapter, solver, sigmas and noise mode): with a
   fastint adapter that has a host path (``host_plan``: the network sees ``c_in x`` at timestep ``t`` and
   ``D = c_skip x + c_out F``), a ``Denoise(fuse=True)`` keeps D as its parts ``(x, F)`` and every combination
   reading it is expanded and merged into one coefficient row per output (float64, on the host); a combination
   whose result is next denoised that way also writes ``c_in x`` as a second row (the next network input, no op
   of its own; not for a ``Denoise(stage=False)``, the first evaluation of a nested solver run). Coefficients are
   merged per input in order of appearance, zero ones dropped, and checked finite.
   State buffers are assigned by liveness (a state's buffer is reused once nothing reads it any more; an exact
   alias of an input is allowed by the op); every network input gets memory of its own (a network may keep its
   input or return a view of it);
3. **replayed** (``_execute``): per request one model call or one fused-op call. Before the first network call
   ``_bind`` gives the run's instructions their tensors (each combination's output tensors, each network input's
   buffer, each step's raw op and seeds: a network evicts the caches, so every operation between two network
   calls costs several times what it costs before the first one); ``registry.op_memo`` keeps the raw op per kind
   across runs. In a run that calls the network itself without callback, progress bar or per-step checks, each
   run of STEPs whose network input is already staged and whose op is the compiled extension's is one REPLAY:
   ``fastint._C.replay_steps`` (csrc/step_replay.cpp) calls the network and the op for each of them in C++, with
   the rules below, and hands a step whose output it cannot take as is (another dtype, a layout the op refuses,
   one requiring grad, not a tensor) back with that output; that step and the rest of the run go on in Python.

``_execute`` is a generator that yields each network evaluation (model input, timestep batch, state) and receives
the output: ``run`` answers it by calling the network in the caller's thread; ``FastintScheduler`` answers it from
diffusers' ``step``. So ``fastint.sample``, the k-diffusion drop-ins, the CLI, ``fastint.cuda_graph`` and the
diffusers scheduler run the same code.

**Model outputs kept across a later write.** A model output that a later request still reads after the next model
evaluation (a multistep history, Heun's first D) is copied when its storage can change under it: when anyone but
the executor holds the tensor or its storage (a network returning the same buffer every call, as CUDA-graph or
``torch.compile(mode="reduce-overhead")`` models do; a view of its input; an output written in place into a
buffer the network keeps). The test is two reference counts (``fastint._C.use_counts``, ~1 us); a fresh output
is never copied. An output of the state's dtype goes straight to an op that checks its tensors itself (the compiled
kernels: shape, device, layout, overlap); only an output such an op refuses, or one of another dtype, goes through
the Python checks, which name the problem or convert it.

**Gradients.** The fused op is differentiable (``fastint.ops.autograd``). With grad mode on, from the first tensor
that requires grad (x, a model output, injected noise, a guidance gradient) every later combination writes fresh
tensors instead of the run's buffers, and a network input of a state requiring grad is computed out of place:
autograd may keep any earlier state for the backward pass (a network keeps its input for its weights' gradients),
so nothing it may have recorded is overwritten. Without grad, or while nothing requires grad, the replay is
unchanged; the check is one attribute per model output.
"""

import functools
import math
import operator
import sys
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .models.adapters import check_output_shape, output_tensor
from .ops import extension, registry
from .ops.contract import KERNEL_DTYPES, MAX_INPUTS, validate
from .solvers.program import Combine, Denoise, Gradient, Report, Tape, record

# -- finiteness ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _compiled_all_finite() -> Optional[Callable[[torch.Tensor], bool]]:
    """The compiled extension's ``all_finite``, or None when the extension is not usable."""
    return None if extension.load() else extension.module().all_finite


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite. With the compiled extension, a plain tensor is checked by
    ``fastint._C.all_finite`` (a contiguous CPU float tensor: one scan of its exponent bits, ~3 instead of ~30 us
    between network calls on a CPU). Otherwise a finite sum proves it (a NaN or an infinity makes the sum NaN or
    infinite): one reduction instead of ``isfinite`` + ``all``; only a non-finite sum, which finite values can also
    give by overflow, is settled element by element."""
    compiled = _compiled_all_finite()
    if compiled is not None and type(t) is torch.Tensor:
        return compiled(t)
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


# -- who else holds a model output -----------------------------------------------------------------------------


def _python_use_counts(t: torch.Tensor, references: Optional[int] = None, storage: Optional[int] = None):
    """(Python references to ``t``, references to its storage), as seen from the caller of this function; with
    ``references`` and ``storage``, whether either count exceeds the given one (``fastint._C.use_counts``)."""
    counts = sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata)
    return counts if references is None else counts[0] > references or counts[1] > storage


def _calibrate_local(counts) -> Tuple[int, int]:
    output = torch.empty(1)
    return counts(output)


def _probe(counts):
    output = yield
    yield counts(output)   # the structure of ``_execute`` receiving an output from ``drive``'s caller


def _calibrate_sent(counts) -> Tuple[int, int]:
    probe = _probe(counts)
    next(probe)
    output = torch.empty(1)
    return probe.send(output)


@functools.lru_cache(maxsize=None)
def _use_counter() -> Tuple[Callable[..., Any], Tuple[int, int], Tuple[int, int]]:
    """``(counts, local, sent)``: ``counts(t)`` gives (Python references to ``t``, references to its storage) and
    ``counts(t, references, storage)`` whether either exceeds the given one --
    ``fastint._C.use_counts`` (no Python storage object: ~10 us less per kept output between two network calls of
    a CPU run) or, without the extension, through ``untyped_storage()``; ``local`` and ``sent`` are what it gives
    for a tensor that only the executor holds: a local variable of ``_execute`` (model called there), or that
    variable plus the caller's that sent it in (``drive``: the diffusers scheduler). Anything above means someone
    else holds the output or its storage (a network reusing its output buffer), and the executor keeps a copy
    (one call of ``counts(output, references, storage)`` per kept output)."""
    counts = _python_use_counts if extension.load() else extension.module().use_counts
    return counts, _calibrate_local(counts), _calibrate_sent(counts)


# -- lowering --------------------------------------------------------------------------------------------------

FUSED, SPLIT, ADAPTER, PLAIN = range(4)      # how a Denoise evaluates the model (see _lower)
FROM_STATE, STAGED, SCALED = range(3)        # where a network input comes from
DENOISE, COMBINE, REPORT, GRADIENT, STEP, REPLAY = range(6)
# STEP: a fused DENOISE and the COMBINE right after it; REPLAY: consecutive STEPs bound to the C++ step replay


class Plan:
    """A lowered run: ``instructions`` over value slots (slot 0: the initial state), ``result`` slot, buffers."""

    __slots__ = ("instructions", "silent", "slots", "result", "state_buffers", "input_buffers", "timesteps",
                 "reports", "evaluations")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _host_plans(model) -> Optional[Callable[[float], Optional[tuple]]]:
    return getattr(model, "host_plan", None) if getattr(model, "denoise_at", None) is not None else None


def _merge(terms, parts: Dict[int, tuple]) -> List[list]:
    """``[[coef, slot], ...]``: the terms with fused D handles expanded into their parts, merged per slot in order
    of appearance (symbolic terms first, then per slot, each sum starting at 0.0)."""
    symbolic: Dict[int, list] = {}
    for coef, handle in terms:
        entry = symbolic.setdefault(handle, [0.0, handle])
        entry[0] += float(coef)
    merged: Dict[int, list] = {}
    for coef, handle in symbolic.values():
        for part_coef, slot in parts.get(handle, ((None, handle),)):
            entry = merged.setdefault(slot, [0.0, slot])
            entry[0] += coef if part_coef is None else coef * part_coef
    return list(merged.values())


def _lower(tape: Tape, host_plan, injected: bool, adapter: bool) -> Plan:
    """Turn a recording into instructions for one model kind (see the module docstring)."""
    entries = tape.entries
    plans = {}
    if host_plan is not None:
        for request, _ in entries:
            if type(request) is Denoise:
                plans[request.sigma] = host_plan(request.sigma)

    def fused(request) -> bool:
        return request.fuse and plans.get(request.sigma) is not None

    # D as parts only when every combination still fits the op's inputs (with injected noise tensors)
    parts_of = {}
    for request, outs in entries:
        if type(request) is Denoise and fused(request):
            _, c_skip, c_out, _ = plans[request.sigma]
            parts_of[outs[0]] = ((c_skip, request.state), (c_out, ("F", outs[0])))
    fuse_all = True
    for request, _ in entries:
        if type(request) is Combine:
            width = len({slot for row in request.rows for _, slot in _merge(row, parts_of)})
            noise = len(request.noise[1]) if injected and request.noise is not None else 0
            if width + noise > MAX_INPUTS:
                fuse_all = False
    if not fuse_all:
        parts_of = {}

    # slots: handles keep their number; F of a fused D and staged inputs get new ones
    next_slot = [max([o for _, outs in entries for o in outs] + [tape.result, 0]) + 1]

    def new_slot():
        next_slot[0] += 1
        return next_slot[0] - 1

    f_slot = {h: new_slot() for h in parts_of}
    parts = {h: tuple((c, f_slot[h] if isinstance(s, tuple) else s) for c, s in p) for h, p in parts_of.items()}

    # which combination writes the next network input: a step update (it reads a fused D) whose output's next reader
    # is a fused Denoise with c_in != 1 that lets it (stage=True: not the first evaluation of a nested solver run)
    stage_for: Dict[int, Tuple[int, float]] = {}   # entry index of the combine -> (denoise entry index, c_in)
    producer = {}
    for index, (request, outs) in enumerate(entries):
        kind = type(request)
        reads = []
        if kind is Combine:
            reads = [h for row in request.rows for _, h in row]
        elif kind in (Denoise, Gradient):
            reads = [request.state]
        elif kind is Report:
            reads = [request.state, request.denoised]
        if kind is Denoise and request.stage and request.state in producer and outs[0] in parts:
            c_in = plans[request.sigma][0]
            combine_index = producer.pop(request.state)
            if c_in != 1.0 and len(entries[combine_index][1]) == 1:
                stage_for[combine_index] = (index, c_in)
        for h in reads:
            producer.pop(h, None)
        if kind is Combine and len(outs) == 1 and any(h in parts for row in request.rows for _, h in row):
            producer[outs[0]] = index    # a step update (it reads a model output): its result is denoised next

    events: Dict[int, int] = {}
    instructions, timesteps, staged_slot = [], [], {}
    evaluations = reports = 0
    for index, (request, outs) in enumerate(entries):
        kind = type(request)
        if kind is Denoise:
            evaluations += 1
            plan = plans.get(request.sigma)
            if outs[0] in parts:
                mode = FUSED
            elif plan is not None:
                mode = SPLIT
            else:
                mode = ADAPTER if adapter else PLAIN
            c_in, c_skip, c_out, t = plan if plan is not None else (1.0, 1.0, 0.0, None)
            source, input_slot = FROM_STATE, request.state
            if mode in (FUSED, SPLIT) and c_in != 1.0:
                source, input_slot = (STAGED, staged_slot.pop(index)) if index in staged_slot else (SCALED, None)
            t_index = None
            if mode in (FUSED, SPLIT):
                t_index = len(timesteps)
                timesteps.append(t)
            out = f_slot[outs[0]] if mode == FUSED else outs[0]
            instructions.append([DENOISE, mode, request.state, source, input_slot, out, request.sigma, c_in,
                                 c_skip, c_out, t_index, evaluations, False])
        elif kind is Combine:
            rows = [_merge(row, parts) for row in request.rows]
            order = []
            for row in rows:
                for _, slot in row:
                    if slot not in order:
                        order.append(slot)
            matrix = [[0.0] * len(order) for _ in rows]
            for m, row in enumerate(rows):
                for coef, slot in row:
                    matrix[m][order.index(slot)] = coef
            keep = [n for n in range(len(order)) if any(matrix[m][n] != 0.0 for m in range(len(rows)))] or [0]
            inputs = [order[n] for n in keep]
            matrix = [[r[n] for n in keep] for r in matrix]
            noise_coeffs, num_noise, counter, draws = [], 0, 0, ()
            if request.noise is not None and any(c != 0.0 for c in request.noise[1]):
                event, noise_coeffs = request.noise[0], list(request.noise[1])
                if injected:
                    event_index = events.setdefault(id(event), len(events))
                    draws = tuple((event_index, k, event.intervals[k]) for k in range(len(noise_coeffs)))
                else:
                    noise_coeffs = event.kernel_coefficients(noise_coeffs)
                    num_noise, counter = len(noise_coeffs), event.counter
            flat = []
            for m, row in enumerate(matrix):
                flat += row + (noise_coeffs if m == 0 else [0.0] * len(noise_coeffs))
            out_slots = list(outs)
            if index in stage_for:
                _, c_in = stage_for[index]
                staged = new_slot()
                staged_slot[stage_for[index][0]] = staged
                flat += [c_in * c for c in flat]
                out_slots.append(staged)
            if not all(math.isfinite(c) for c in flat):
                raise ValueError(f"non-finite step coefficients {flat}: check the sigmas and solver options")
            instructions.append([COMBINE, tuple(inputs), tuple(out_slots), None, flat, num_noise, counter, draws,
                                 (len(inputs) + len(draws), len(out_slots), num_noise), index in stage_for])
        elif kind is Report:
            reports += 1
            denoised = parts.get(request.denoised)
            instructions.append([REPORT, request.i, request.state, request.sigma, request.sigma_hat,
                                 denoised if denoised is not None else request.denoised])
        else:
            evaluations += 1
            instructions.append([GRADIENT, request.fn, request.state, outs[0], request.sigma, evaluations, False])
    last_read = _assign_buffers(instructions, tape.result)
    for index, ins in enumerate(instructions):
        if ins[0] == COMBINE:
            # the slots it reads and, of those, the ones nothing reads after it (for the C++ step replay)
            ins += [ins[1], tuple(slot for slot in dict.fromkeys(ins[1]) if last_read.get(slot) == index)]
            ins[1] = _picker(ins[1])
            staged = ins[9]
            assert not staged or len(ins[3]) == 2  # one state output and the network input it stages
    instructions = [tuple(i) for i in instructions]
    return Plan(instructions=instructions, silent=_steps([i for i in instructions if i[0] != REPORT]),
                slots=next_slot[0],
                result=tape.result,
                state_buffers=_count_buffers(instructions), input_buffers=sum(
                    1 for i in instructions if (i[0] == DENOISE and i[3] == SCALED) or (i[0] == COMBINE and i[9])),
                timesteps=tuple(timesteps), reports=reports, evaluations=evaluations)


def _steps(instructions: List[tuple]) -> List[tuple]:
    """The instructions with each fused network evaluation and the combination right after it merged into one
    STEP (the common step of a replay without callback: one pass through the loop between two network calls). A
    STEP's fields are in the order the replay reads them, the ones only a slow path reads (an output the op refuses,
    a network input computed by the op) last."""
    out, index = [], 0
    while index < len(instructions):
        ins = instructions[index]
        after = instructions[index + 1] if index + 1 < len(instructions) else None
        if ins[0] == DENOISE and ins[1] == FUSED and after is not None and after[0] == COMBINE and not after[7]:
            _, _, state, source, input_slot, out_slot, sigma, c_in, _, _, t_index, evaluation, keep = ins
            _, pick, outs, buffers, coeffs, num_noise, counter, _, kind, staged, slots, release = after
            out.append((STEP, source, input_slot, state, t_index, out_slot, keep, pick, coeffs, num_noise, counter,
                        outs[0] if len(outs) == 1 else None, outs, buffers, staged, kind, sigma, c_in, evaluation,
                        slots, release))
            index += 2
        else:
            out.append(ins)
            index += 1
    return out


def _picker(slots: Tuple[int, ...]) -> Callable[[list], tuple]:
    """``values -> tuple of values[s] for s in slots`` (an ``itemgetter``: no Python frame per call)."""
    if len(slots) > 1:
        return operator.itemgetter(*slots)
    return lambda values, slot=slots[0]: (values[slot],)


def _reads(ins) -> List[int]:
    op = ins[0]
    if op == COMBINE:
        return list(ins[1])
    if op == DENOISE:
        return [ins[2]] + ([ins[4]] if ins[3] == STAGED else [])
    if op == REPORT:
        return [ins[2]] + ([s for _, s in ins[5]] if isinstance(ins[5], tuple) else [ins[5]])
    return [ins[2]]


def _assign_buffers(instructions: List[list], result: int) -> Dict[int, int]:
    """Give every combination output a state buffer (COMBINE's fourth field: buffer numbers, -1 for a network
    input of its own) by liveness, and mark model outputs read after the next model evaluation (their twelfth /
    seventh field: ``keep``, the executor then copies them if their storage can change). Returns the index of the
    last instruction reading each slot."""
    last_read: Dict[int, int] = {result: len(instructions)}
    readers: Dict[int, List[int]] = {}
    for index, ins in enumerate(instructions):
        for slot in _reads(ins):
            last_read[slot] = index
            if ins[0] != REPORT:
                readers.setdefault(slot, []).append(index)
    evaluations = [i for i, ins in enumerate(instructions) if ins[0] in (DENOISE, GRADIENT)]
    for position, index in enumerate(evaluations):
        ins = instructions[index]
        uses = readers.get(ins[5] if ins[0] == DENOISE else ins[3], [])
        next_evaluation = evaluations[position + 1] if position + 1 < len(evaluations) else len(instructions)
        ins[12 if ins[0] == DENOISE else 6] = len(uses) > 1 or any(u > next_evaluation for u in uses)
    holders: Dict[int, int] = {}     # buffer -> live slots in it
    buffer_of: Dict[int, int] = {}
    free: List[int] = []
    count = 0
    for index, ins in enumerate(instructions):
        for slot in set(_reads(ins)):
            if last_read.get(slot) == index and slot in buffer_of:
                b = buffer_of.pop(slot)
                holders[b] -= 1
                if holders[b] == 0:
                    free.append(b)
        if ins[0] != COMBINE:
            continue
        outs = ins[2]
        states = outs[:-1] if ins[9] else outs
        chosen = []
        for slot in states:
            if free:
                b = free.pop()
            else:
                b, count = count, count + 1
            buffer_of[slot] = b
            holders[b] = 1
            if last_read.get(slot) is None:      # never read: free again after this call
                buffer_of.pop(slot)
                holders[b] = 0
                free.append(b)
            chosen.append(b)
        ins[3] = tuple(chosen + ([-1] if ins[9] else []))
    return last_read


def _count_buffers(instructions) -> int:
    return max([b for ins in instructions if ins[0] == COMBINE for b in ins[3]] + [-1]) + 1


_RECORDINGS: Dict[Any, Tape] = {}
_LOWERED = weakref.WeakKeyDictionary()   # adapter -> {key: Plan}
_PLAIN_LOWERED: Dict[Any, Plan] = {}
_MEMO_SIZE = 64


def remember(memo: dict, key, value):
    """``memo[key] = value`` (dropping the oldest entry of a full memo); returns ``value``."""
    if len(memo) >= _MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value
    return value


def recording(solver, sigmas: Sequence[float]) -> Tape:
    """The solver's recorded program on ``sigmas`` (memoised when its options are hashable)."""
    key = (solver.key(), tuple(sigmas))
    try:
        tape = _RECORDINGS.get(key)
    except TypeError:
        return record(solver.program(list(sigmas), 0))
    if tape is None:
        tape = remember(_RECORDINGS, key, record(solver.program(list(sigmas), 0)))
    return tape


def lowered(solver, sigmas: Sequence[float], model, injected: bool) -> Plan:
    """The lowered run of ``solver`` on ``sigmas`` for ``model`` (memoised per adapter and its ``revision``)."""
    host_plan = _host_plans(model)
    adapter = getattr(model, "denoise_at", None) is not None
    try:
        key = (solver.key(), tuple(sigmas), injected, getattr(model, "revision", None), adapter)
        hash(key)
    except TypeError:
        return _lower(recording(solver, sigmas), host_plan, injected, adapter)
    memo = _PLAIN_LOWERED
    if host_plan is not None:
        try:
            memo = _LOWERED.get(model)
            if memo is None:
                memo = _LOWERED[model] = {}
        except TypeError:   # a model object that takes no weak reference: no memo
            return _lower(recording(solver, sigmas), host_plan, injected, adapter)
    plan = memo.get(key)
    if plan is None:
        plan = remember(memo, key, _lower(recording(solver, sigmas), host_plan, injected, adapter))
    return plan


# -- the run ---------------------------------------------------------------------------------------------------

_PREALLOCATED_BYTES = 32 << 20   # a run's state buffers and network inputs allocated at once up to this size


class Run:
    """What one run needs besides its plan: the model, the state's layout, noise, callbacks, checks."""

    def __init__(self, model, x: torch.Tensor, extra_args: Dict[str, Any], seeds: Optional[torch.Tensor],
                 noise_sampler, backend: Optional[str], callback, check_finite: str, progress_bar=None):
        self.model, self.extra_args, self.seeds = model, extra_args, seeds
        self.noise_sampler, self.backend, self.callback = noise_sampler, backend, callback
        self.check_finite, self.progress_bar = check_finite, progress_bar
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.name = type(model).__name__

    def draw_injected_noise(self, sigma_a: float, sigma_b: float) -> torch.Tensor:
        z = self.noise_sampler(sigma_a, sigma_b)
        if not isinstance(z, torch.Tensor) or z.shape != self.shape or z.device != self.device:
            raise ValueError(f"noise_sampler returned {getattr(z, 'shape', type(z))} on "
                             f"{getattr(z, 'device', '?')}; expected a tensor of shape {tuple(self.shape)} on "
                             f"{self.device}")
        return z if z.is_contiguous() else z.contiguous()

    def checked(self, out, sigma: float, evaluation: int, what: str = "the model") -> torch.Tensor:
        """A model output checked like the state: a tensor of its shape, floating point, on its device (and finite
        with ``check_finite='step'``), made contiguous."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{what} returned {type(out).__name__}, expected a tensor shaped like x")
        if out.shape != self.shape or not out.is_floating_point() or out.device != self.device:
            raise ValueError(f"{what} returned {tuple(out.shape)} {out.dtype} on {out.device}; expected "
                             f"{tuple(self.shape)} floating point on {self.device}")
        if self.check_finite == "step" and not all_finite(out):
            raise FloatingPointError(f"{what} output at sigma={sigma:.6g} (evaluation {evaluation}) "
                                     "contains NaN or Inf")
        return out if out.is_contiguous() else out.contiguous()

    def network_output(self, f, sigma: float, evaluation: int) -> torch.Tensor:
        """A fastint adapter's network output F: unwrapped, checked, in a dtype the op reads."""
        if type(f) is not torch.Tensor:
            f = output_tensor(self.name, f)
        f = self.checked(check_output_shape(self.name, f, self.shape), sigma, evaluation)
        return f if f.dtype == self.dtype or f.dtype in KERNEL_DTYPES else f.to(self.dtype)

    def buffers(self, plan: Plan) -> Tuple[List[torch.Tensor], Iterator[torch.Tensor]]:
        """The state buffers and an iterator over the network-input buffers (views of one block up to
        ``_PREALLOCATED_BYTES``: an allocation between two network calls runs with cold caches)."""
        total = plan.state_buffers + plan.input_buffers
        if total and total * math.prod(self.shape) * self.dtype.itemsize <= _PREALLOCATED_BYTES:
            views = torch.empty((total,) + tuple(self.shape), dtype=self.dtype, device=self.device).unbind(0)
            return list(views[:plan.state_buffers]), iter(views[plan.state_buffers:])
        states = [torch.empty(self.shape, dtype=self.dtype, device=self.device) for _ in range(plan.state_buffers)]
        return states, (torch.empty(self.shape, dtype=self.dtype, device=self.device)
                        for _ in range(plan.input_buffers))

    def first_op(self, key, outs, inputs, coeffs, seeds, counter, num_noise):
        """Run the first call of a kind in this run (``key``: counts and, unless every tensor has the state's
        dtype, the dtypes) and return ``(backend, raw op)`` for the later ones. The first call of a kind in the
        process is validated and picks the backend (``registry.remember_choice``); later runs reuse the choice."""
        process_key = registry.choice_key(key + (self.dtype, self.device.type), self.backend)
        chosen = registry.remembered_choice(process_key)
        if chosen is None:
            width = len(coeffs) // len(outs)
            call = validate(inputs, [coeffs[m * width:(m + 1) * width] for m in range(len(outs))], outs, seeds,
                            counter, num_noise)
            backend = registry.select(call, self.backend)
            chosen = registry.remember_choice(process_key, backend)
            backend.run(call)
            return chosen
        chosen[1](outs, inputs, coeffs, seeds, counter, num_noise)
        return chosen

    def op(self, ops: dict, outs, inputs, coeffs) -> None:
        """A deterministic fused-op call outside the replayed combinations (a callback's materialised D, a network
        input c_in x)."""
        key = (len(inputs), len(outs), 0) + tuple([t.dtype for t in inputs])
        chosen = ops.get(key)
        if chosen is None:
            ops[key] = self.first_op(key, outs, inputs, coeffs, None, 0, 0)
        else:
            chosen[1](outs, inputs, coeffs, None, 0, 0)


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def _network_input(run: Run, ops: dict, xs: torch.Tensor, c_in: float, out: torch.Tensor,
                   grad: bool) -> torch.Tensor:
    """``c_in x`` in the network-input buffer ``out`` by the fused op (one input, one coefficient: the same float32
    product as ``torch.mul``, in about half its time with the caches a network leaves), or out of place when
    autograd records x."""
    if grad and xs.requires_grad:
        return xs * c_in
    run.op(ops, [out], [xs], [c_in])
    return out


def _fresh(run: Run, count: int) -> List[torch.Tensor]:
    """``count`` new state-like tensors: a combination's outputs once autograd records the run (it may keep any
    earlier state, and a buffer written before is never written again)."""
    return [torch.empty(run.shape, dtype=run.dtype, device=run.device) for _ in range(count)]


def _outputs(states: List[torch.Tensor], inputs: Iterator[torch.Tensor], buffers: Tuple[int, ...],
             staged: bool) -> List[torch.Tensor]:
    """The tensors a combination writes: the state buffers of its buffer numbers and, when it stages the next network
    input, the next input buffer."""
    return [states[buffers[0]], next(inputs)] if staged else [states[b] for b in buffers]


@functools.lru_cache(maxsize=None)
def _compiled_step_replay() -> Optional[Tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]]:
    """``fastint._C``'s ``(fused_step, step_tape, replay_steps)``, or None when the extension is not usable."""
    if extension.load():
        return None
    module = extension.module()
    return module.fused_step, module.step_tape, module.replay_steps


def _tape(bound: List[tuple], taped: List[tuple]) -> None:
    """Replace the last ``len(taped)`` STEPs of ``bound`` by one ``(REPLAY, tape, those STEPs, its position)``
    (``taped``: their rows for ``fastint._C.step_tape``) and empty ``taped``."""
    if taped:
        steps = bound[-len(taped):]
        del bound[-len(taped):]
        bound.append((REPLAY, _compiled_step_replay()[1](taped), steps, len(bound)))
        taped.clear()


def _bind(instructions: List[tuple], states: List[torch.Tensor], inputs: Iterator[torch.Tensor],
          seeds: Optional[torch.Tensor], direct_ops: Optional[dict], replay: bool) -> List[tuple]:
    """The instructions of one run with its tensors in place, before the first network call (a step between two
    network calls then only reads them: with the caches a network leaves, every Python operation there costs).

    A combination gets its output tensors (the state buffers of its buffer numbers and, when it stages the next
    network input, an input buffer) and its seeds (None without in-kernel noise); a network input ``c_in x``
    computed by the op gets its buffer in place of its slot; a STEP gets the raw op of its kind when ``direct_ops``
    (the run's op memo, given when outputs may go straight to the op) holds one whose backend checks its tensors
    itself, and its slow-path fields as one tuple ``(kind, sigma, c_in, evaluation)``.

    With ``replay`` (a run that calls the network itself, without callback, progress bar or per-step checks), each
    maximal run of STEPs whose raw op is the compiled extension's and whose network input is already there (staged
    by the step before, or the state itself) becomes one REPLAY: ``fastint._C.replay_steps`` runs them in C++
    (csrc/step_replay.cpp) and hands a step it cannot finish back to the Python replay of the STEPs kept beside it."""
    bound: List[tuple] = []
    taped: List[tuple] = []
    compiled = _compiled_step_replay() if replay else None
    for ins in instructions:
        op = ins[0]
        if op == STEP:
            (_, source, input_slot, state, t_index, out, keep, pick, coeffs, num_noise, counter, first, outs, buffers,
             staged, kind, sigma, c_in, evaluation, slots, release) = ins
            model_input = next(inputs) if source == SCALED else input_slot
            chosen = direct_ops.get(kind) if direct_ops is not None else None
            fn = chosen[1] if chosen is not None and chosen[0].raw_checks else None
            out_tensors = _outputs(states, inputs, buffers, staged)
            step_seeds = seeds if num_noise else None
            if compiled is not None and fn is compiled[0] and source != SCALED:
                taped.append((input_slot, t_index, out, keep, slots, out_tensors, coeffs, step_seeds, counter,
                              num_noise, outs, release))   # (input_slot: the staged input's slot or the state's)
            else:
                _tape(bound, taped)
            bound.append((STEP, source, model_input, state, t_index, out, keep, pick, fn, out_tensors, coeffs,
                          step_seeds, counter, num_noise, first, outs, (kind, sigma, c_in, evaluation), release))
            continue
        _tape(bound, taped)
        if op == COMBINE:
            _, pick, outs, buffers, coeffs, num_noise, counter, draws, kind, staged, _, release = ins
            bound.append((COMBINE, pick, _outputs(states, inputs, buffers, staged), coeffs,
                          seeds if num_noise else None, counter, num_noise, draws, kind,
                          outs[0] if len(outs) == 1 else None, outs, release))
        elif op == DENOISE and ins[3] == SCALED:
            bound.append(ins[:4] + (next(inputs),) + ins[5:])
        else:
            bound.append(ins)
    _tape(bound, taped)
    return bound


def _execute(plan: Plan, run: Run, x: torch.Tensor, network: Optional[Callable] = None):
    """Replay ``plan`` from ``x``; returns the final state (a buffer of the run). Each network evaluation of a
    fastint adapter calls ``network`` or, when it is None, is yielded as ``(network input, timestep batch, state)``
    and its output received."""
    model, extra, seeds, dtype = run.model, run.extra_args, run.seeds, run.dtype
    if network is not None and extra:
        network = functools.partial(network, **extra)   # (without extra args: a plain call, no kwargs dict per call)
    grad = torch.is_grad_enabled()
    recording = grad and x.requires_grad   # autograd records the run from the first tensor requiring grad on
    v: List[Any] = [None] * plan.slots
    v[0] = x if x.is_contiguous() else x.contiguous()
    states, inputs = run.buffers(plan)
    t_batches = model.timestep_batches(v[0], plan.timesteps) if plan.timesteps else ()
    ops = registry.op_memo(registry.choice_key((dtype, run.device.type), run.backend))
    injected: Dict[Tuple[int, int], torch.Tensor] = {}
    callback, bar, checked = run.callback, run.progress_bar, run.checked
    shape, device = run.shape, run.device
    careful = run.check_finite == "step"   # every model output through the full checks (finiteness included)
    counts, local, sent = _use_counter()
    # the counts of a network output only this run holds (received here, or sent in by drive's caller)
    local_references, local_storage = local
    held_references, held_storage = local if network is not None else sent
    uniform = True      # every tensor so far has the state's dtype: an op's kind is its counts alone
    if bar is not None:
        bar.total = plan.reports
        bar.refresh()
    silent = callback is None and bar is None
    program = _bind(plan.silent if silent else plan.instructions, states, inputs, seeds, None if careful else ops,
                    silent and not careful and network is not None and type(t_batches) in (tuple, list))
    pending = None   # a network output the C++ replay handed back with the step it could not finish
    shift = 0        # instructions inserted into ``program`` so far (the STEPs of such hand-backs)
    for ins in program:
        op = ins[0]
        if op == STEP:
            (_, source, model_input, state, t_index, out, keep, pick, fn, out_tensors, coeffs, step_seeds, counter,
             num_noise, first, outs, slow, release) = ins
            if pending is not None:
                f, pending = pending, None
            else:
                if source == STAGED:
                    model_input = v[model_input]
                elif source == FROM_STATE:
                    model_input = v[state]
                else:
                    model_input = _network_input(run, ops, v[state], slow[2], model_input, grad)
                if network is not None:
                    f = network(model_input, t_batches[t_index])
                    if type(f) is not torch.Tensor:
                        f = output_tensor(run.name, f)
                else:
                    f = yield model_input, t_batches[t_index], v[state]
            # an output of the state's dtype goes straight to an op that checks its tensors itself (shape, device,
            # layout; the compiled kernels); anything else, or what that op refuses, through the checks naming it
            direct = fn is not None and uniform and type(f) is torch.Tensor and f.dtype == dtype
            if not direct:
                f = run.network_output(f, slow[1], slow[3])
                uniform = uniform and f.dtype == dtype
            if keep and counts(f, held_references, held_storage):
                f = _copy(f)
            if grad:
                recording = recording or f.requires_grad
                if recording:
                    out_tensors = _fresh(run, len(out_tensors))
            v[out] = f
            tensors = pick(v)
            if direct:
                try:
                    fn(out_tensors, tensors, coeffs, step_seeds, counter, num_noise)
                except RuntimeError:     # the op refused a tensor before writing anything: the checks say why
                    v[out] = f = run.network_output(f, slow[1], slow[3])
                    tensors = pick(v)
                    direct = False
            del f
            if not direct:
                key = slow[0] if uniform else slow[0] + tuple([t.dtype for t in tensors])
                chosen = ops.get(key)
                if chosen is None:
                    ops[key] = run.first_op(key, out_tensors, tensors, coeffs, step_seeds, counter, num_noise)
                else:
                    chosen[1](out_tensors, tensors, coeffs, step_seeds, counter, num_noise)
            if first is not None:
                v[first] = out_tensors[0]
            else:
                for slot, t in zip(outs, out_tensors):
                    v[slot] = t
            for slot in release:     # what no later instruction reads (a run holds no more than its solver reads)
                v[slot] = None
            del tensors
        elif op == COMBINE:
            _, pick, out_tensors, coeffs, step_seeds, counter, num_noise, draws, kind, first, outs, release = ins
            tensors = pick(v)
            if draws:
                tensors = list(tensors)
                for event, stream, interval in draws:
                    z = injected.get((event, stream))
                    if z is None:
                        z = injected[(event, stream)] = run.draw_injected_noise(*interval)
                        uniform = uniform and z.dtype == dtype
                        recording = recording or (grad and z.requires_grad)
                    tensors.append(z)
            if recording:
                out_tensors = _fresh(run, len(out_tensors))
            key = kind if uniform else kind + tuple([t.dtype for t in tensors])
            chosen = ops.get(key)
            if chosen is None:
                ops[key] = run.first_op(key, out_tensors, tensors, coeffs, step_seeds, counter, num_noise)
            else:
                chosen[1](out_tensors, tensors, coeffs, step_seeds, counter, num_noise)
            if first is not None:
                v[first] = out_tensors[0]
            else:
                for slot, t in zip(outs, out_tensors):
                    v[slot] = t
            for slot in release:
                v[slot] = None
            del tensors
        elif op == DENOISE:
            _, mode, state, source, input_slot, out, sigma, c_in, c_skip, c_out, t_index, evaluation, keep = ins
            xs = v[state]
            if mode <= SPLIT:                        # FUSED or SPLIT: the adapter's network, at c_in x
                if source == STAGED:
                    model_input = v[input_slot]
                elif source == FROM_STATE:
                    model_input = xs
                else:
                    model_input = _network_input(run, ops, xs, c_in, input_slot, grad)
                if network is not None:
                    f = network(model_input, t_batches[t_index])
                    if type(f) is not torch.Tensor:
                        f = output_tensor(run.name, f)
                else:
                    f = yield model_input, t_batches[t_index], xs
                if mode == FUSED:
                    if careful or type(f) is not torch.Tensor or f.dtype != dtype or f.shape != shape \
                            or f.device != device or not f.is_contiguous():
                        f = run.network_output(f, sigma, evaluation)
                    if keep and counts(f, held_references, held_storage):
                        f = _copy(f)
                    uniform = uniform and f.dtype == dtype
                    recording = recording or (grad and f.requires_grad)
                    v[out] = f
                    del f
                    continue
                if type(f) is not torch.Tensor:
                    f = output_tensor(run.name, f)
                d = checked(model.to_state(xs, check_output_shape(run.name, f, shape), c_skip, c_out), sigma,
                            evaluation)
                del f
            elif mode == PLAIN:
                d = model(xs, torch.full((shape[0],), sigma, dtype=dtype, device=device), **extra)
                d = checked(d, sigma, evaluation)
            else:
                d = checked(model.denoise_at(xs, sigma, **extra), sigma, evaluation)
            if keep and counts(d, local_references, local_storage):
                d = _copy(d)
            uniform = uniform and d.dtype == dtype
            recording = recording or (grad and d.requires_grad)
            v[out] = d
            del d
        elif op == REPLAY:
            _, tape, steps, position = ins
            stopped, pending = (0, None) if recording or not uniform else \
                _compiled_step_replay()[2](tape, v, network, t_batches)
            if stopped < len(steps):    # that step and the ones after it run in Python, from the output handed back
                program[position + shift + 1:position + shift + 1] = steps[stopped:]
                shift += len(steps) - stopped
        elif op == REPORT:
            _, i, state, sigma, sigma_hat, denoised = ins
            if callback is not None:
                if isinstance(denoised, tuple):
                    parts = [(c, s) for c, s in denoised if c != 0.0] or [denoised[0]]
                    d = torch.empty(run.shape, dtype=dtype, device=run.device)
                    run.op(ops, [d], [v[s] for _, s in parts], [c for c, _ in parts])
                else:
                    d = v[denoised]
                callback({"x": v[state], "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": d})
            if bar is not None:
                bar.update(1)
        else:
            _, fn, state, out, sigma, evaluation, keep = ins
            g = fn(v[state], torch.full((run.shape[0],), sigma, dtype=dtype, device=run.device))
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"the guidance function returned {type(g).__name__}, expected a tensor shaped like x")
            if g.shape != run.shape or not g.is_floating_point() or g.device != run.device:
                raise ValueError(f"the guidance function returned {tuple(g.shape)} {g.dtype} on {g.device}; "
                                 f"expected grad_x log p(y | x) of shape {tuple(run.shape)}, floating point, on "
                                 f"{run.device}")
            if run.check_finite == "step" and not all_finite(g):
                raise FloatingPointError(f"the guidance gradient at sigma={sigma:.6g} contains NaN or Inf")
            g = g if g.is_contiguous() else g.contiguous()
            if keep and counts(g, local_references, local_storage):
                g = _copy(g)
            recording = recording or (grad and g.requires_grad)
            v[out] = g
            del g
    return v[plan.result]


def run(plan: Plan, run_: Run, x: torch.Tensor) -> torch.Tensor:
    """Replay ``plan`` calling the network of the fastint adapter (``run_.model.inner_model``) in this thread."""
    try:
        next(_execute(plan, run_, x, getattr(run_.model, "inner_model", None)))
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the executor yielded a network evaluation although it was given the network")


def drive(plan: Plan, run_: Run, x: torch.Tensor):
    """``_execute`` for a caller that evaluates the network itself (the diffusers scheduler)."""
    return _execute(plan, run_, x)
