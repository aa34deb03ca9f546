"""The planned loop: a linear solver with a fastint adapter, each step one fused-op call and little Python.

A solver whose step i is linear in the current state and the last data predictions,

    x_{i+1} = a_i x_i + sum_{j=0..J} d_{i,j} D_{i-j} + n_i z_i                     (J <= 2, z_i: stream 0, counter i)

(Euler without churn, the DPM-Solver++ multistep family), describes its steps as ``LinearStep(a_i, d_i, n_i)``
before the loop, all computed from the sigmas in float64. With an adapter that has a host path
(``host_plan``: network input c_in x, D = c_skip x + c_out F), every D is expanded into its parts,

    x_{i+1} = (a_i + d_{i,0} c_skip_i) x_i + d_{i,0} c_out_i F_i
              + sum_{j>=1} d_{i,j} (c_skip_{i-j} x_{i-j} + c_out_{i-j} F_{i-j}) + n_i z_i,
    u_{i+1} = c_in_{i+1} x_{i+1}                   (second output row, c_in_{i+1} times the first: the next input)

and every step's coefficient list, the inputs it picks from (x_i, F_i, x_{i-1}, F_{i-1}, ...), its timestep batch
and its output buffer are fixed before the first network call (the Python that runs between two network calls
runs with cold caches, so the loop body is kept to the network call and one fused-op call; the compiled op checks
the network output itself, any other backend gets it checked first).
Zero coefficients are dropped as ``combine`` drops them. State buffers rotate with period J + 1: x_{i+1} takes the
buffer of x_{i-J}, which step i reads for the last time (an exact alias, allowed). A network output in another
float dtype than the state enters the op as it is (the op converts per input; float64 is first converted to the
state's dtype). The results equal the generic loop's (``denoise_terms`` + ``combine``) up to the rounding of the
merged coefficients.
"""

import math
import operator
import weakref
from typing import Callable, Iterator, List, NamedTuple, Sequence, Tuple

import torch

from ..models.adapters import check_output_shape, output_tensor
from ..ops import registry
from ..ops.contract import KERNEL_DTYPES


class LinearStep(NamedTuple):
    """Step i: ``x_{i+1} = a x_i + sum_j d[j] D_{i-j} + noise z_i``; ``d`` has the same length J + 1 at every step
    (zeros where the history is shorter)."""

    a: float
    d: Sequence[float]
    noise: float


def plannable(ctx) -> bool:
    """Whether ``run_linear`` can run this sampling call: a fastint adapter with a host path at every sigma that is
    evaluated, in-kernel (or no) noise, no per-step callback or progress bar, and nothing autograd records (its
    state buffers are overwritten in place)."""
    if ctx._host_plan is None or ctx.callback is not None or ctx.progress_bar is not None \
            or ctx.noise_sampler is not None or ctx.records_grad:
        return False
    return all(map(ctx._host_plan, ctx.sigmas[:-1]))  # a plan is a non-empty tuple


def _picker(pick: List[int]) -> Callable[[list], tuple]:
    """``slots -> tuple of slots[k] for k in pick`` (an ``itemgetter``: no Python frame per step)."""
    return operator.itemgetter(*pick) if len(pick) > 1 else lambda slots, k=pick[0]: (slots[k],)


def _step_calls(steps: List[LinearStep], plans) -> List[Tuple[Callable[[list], tuple], List[float], int, bool, tuple]]:
    """Per step: a picker of the slots it reads (indices into [x_i, F_i, x_{i-1}, F_{i-1}, ...], see ``_picker``),
    its flattened coefficient rows (first row, noise, then c_in_{i+1} times both when it also writes the next network
    input), K, whether it writes that input, and its kind (slots read, K, writes the input)."""
    calls, last = [], len(steps) - 1
    for i, (a, d, noise) in enumerate(steps):
        pick, coeffs = [], []
        for j in range(min(i + 1, len(d))):
            _, c_skip, c_out, _ = plans[i - j]
            for slot, coef in ((2 * j, d[j] * c_skip + (a if j == 0 else 0.0)), (2 * j + 1, d[j] * c_out)):
                if coef != 0.0:
                    pick.append(slot)
                    coeffs.append(coef)
        if not pick:  # every coefficient vanished (a degenerate step): write zeros as combine does
            pick, coeffs = [0], [0.0]
        num_noise = 1 if noise != 0.0 else 0
        coeffs += [noise] * num_noise
        c_in_next = plans[i + 1][0] if i < last else 1.0
        if c_in_next != 1.0:
            coeffs += [c_in_next * c for c in coeffs]
        writes_input = c_in_next != 1.0
        calls.append((_picker(pick), coeffs, num_noise, writes_input, (len(pick), num_noise, writes_input)))
    return calls


_SPECS = weakref.WeakKeyDictionary()  # adapter -> {(solver key, sigmas, revision): _plan's tuple}
_MEMO_SIZE = 64                                         # entries per memo (oldest dropped first)


def _remember(memo: dict, key, value):
    if len(memo) >= _MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value
    return value


_PREALLOCATED_BYTES = 32 << 20   # a run's state buffers and network inputs allocated at once up to this size


def _buffers(ctx, x: torch.Tensor, pool_size: int,
             input_count: int) -> Tuple[Sequence[torch.Tensor], torch.Tensor, Iterator[torch.Tensor]]:
    """``(pool, first_input, next_inputs)`` for states like ``x``: ``pool_size`` state buffers, a buffer for the
    first network input and an iterator over the ``input_count`` fresh buffers of the network inputs the steps write,
    in order. Up to ``_PREALLOCATED_BYTES`` in all they are views of one block allocated before the first network
    call (an allocation between two network calls runs with cold caches and costs ~25 us on a CPU, more than the
    rest of the step); beyond that, the network inputs are allocated one per step. Every network input is distinct
    memory either way (a network may keep its input, or return a view of it)."""
    total = pool_size + 1 + input_count
    if total * x.numel() * x.element_size() <= _PREALLOCATED_BYTES:
        views = torch.empty((total,) + tuple(ctx.shape), dtype=ctx.dtype, device=ctx.device).unbind(0)
        return views[:pool_size], views[pool_size], iter(views[pool_size + 1:])
    return ([ctx._input_buffer() for _ in range(pool_size)], ctx._input_buffer(),
            (ctx._input_buffer() for _ in range(input_count)))


def _plan(ctx, steps: List[LinearStep]) -> tuple:
    """What a run needs of its steps, before any tensor: c_in of the first network input, the timesteps, the step
    calls (``_step_calls``), each step's kind and the distinct kinds, the state buffers' rotation period and how many
    network inputs the steps write."""
    plans = [ctx._host_plan(s) for s in ctx.sigmas[:len(steps)]]
    calls = _step_calls(steps, plans)
    coefficients = [c for call in calls for c in call[1]]
    if not all(math.isfinite(c) for c in coefficients):
        raise ValueError(f"non-finite step coefficients {coefficients}: check the sigmas and solver options")
    kinds = [call[4] for call in calls]
    return (plans[0][0], tuple(plan[3] for plan in plans), calls, kinds, frozenset(kinds),
            min(len(steps[0].d), len(steps)), sum(1 for call in calls if call[3]))


def _conformed(ctx, f: torch.Tensor, sigma: float, evaluations_before: int) -> torch.Tensor:
    """The checked path of a network output ``f`` (a tensor): its shape against the adapter's, the context's checks
    (dtype, device, finiteness when asked, with the evaluation's number in the message), then the conversions the op
    needs (a float dtype the op cannot read goes to the state's dtype; a strided output is made contiguous)."""
    ctx.nfe = evaluations_before
    f = ctx._checked(check_output_shape(type(ctx.model).__name__, f, ctx.shape), sigma)
    if f.dtype != ctx.dtype and f.dtype not in KERNEL_DTYPES:
        f = f.to(ctx.dtype)
    return f if f.is_contiguous() else f.contiguous()


def run_linear(ctx, x: torch.Tensor, solver_key: tuple, make_steps: Callable[[], List[LinearStep]]) -> torch.Tensor:
    """Run the solver's steps (``make_steps()``: one per interval of ``ctx.sigmas``) from ``x``; see the module
    docstring. ``solver_key`` identifies the solver and its options: per adapter, the steps' expanded coefficients
    are computed once per (solver key, sigmas) and reused by later runs (they are host floats that depend on nothing
    else; an adapter's ``revision`` changes when one of its attributes is set).

    Once a kind of step has run on a backend whose op checks its tensors itself (``Backend.raw_checks``: the
    compiled extension), later steps of that kind hand the network output straight to the op; only when the op
    refuses it does the output take the checked path (``_conformed``), which names the problem or converts it."""
    adapter, extra, sigmas, seeds = ctx.model, ctx.extra_args, ctx.sigmas, ctx.seeds
    key = (solver_key, tuple(sigmas), adapter.revision)
    try:
        per_adapter = _SPECS.get(adapter)
        if per_adapter is None:
            per_adapter = _SPECS[adapter] = {}
    except TypeError:  # a model object that takes no weak reference: no memo
        per_adapter = {}
    planned = per_adapter.get(key)
    if planned is None:
        planned = _remember(per_adapter, key, _plan(ctx, make_steps()))
    c_in_first, timesteps, calls, kinds, distinct_kinds, pool_size, input_count = planned
    t_batches = adapter.timestep_batches(x, timesteps)
    pool, first_input, next_inputs = _buffers(ctx, x, pool_size, input_count)
    # ((inputs, noise streams, writes the input), F's dtype) -> (backend, raw op), once ctx has checked a call of
    # that kind; `unchecked`: per step, the op of a backend that checks its tensors itself (F in the state's dtype)
    ops = registry.op_memo(registry.choice_key((ctx.dtype, ctx.device.type), ctx.backend))
    shape, dtype, device, checked_steps = ctx.shape, ctx.dtype, ctx.device, ctx.nfe
    every_output_checked = ctx.check_finite == "step"
    self_checking = {}
    if not every_output_checked:
        for kind in distinct_kinds:
            entry = ops.get((kind, dtype))
            if entry is not None and entry[0].raw_checks:
                self_checking[kind] = entry[1]
    unchecked = list(map(self_checking.get, kinds))
    network, name = adapter.inner_model, type(adapter).__name__
    x = x if x.is_contiguous() else x.contiguous()
    model_input = x if c_in_first == 1.0 else torch.mul(x, c_in_first, out=first_input)
    slots: List[torch.Tensor] = []
    kept = 2 * pool_size - 2    # history slots carried to the next step: x_{i-j}, F_{i-j} for j = 1..J
    for i, (pick, coeffs, num_noise, writes_input, kind) in enumerate(calls):
        f = network(model_input, t_batches[i], **extra)
        if type(f) is not torch.Tensor:
            f = output_tensor(name, f)
        slots = [x, f] + slots[:kept]
        x = pool[(i + 1) % len(pool)]
        if writes_input:
            model_input = next(next_inputs)
            outs = [x, model_input]
        else:
            model_input, outs = x, [x]
        op = unchecked[i]
        if op is not None:
            try:
                op(outs, pick(slots), coeffs, seeds if num_noise else None, i, num_noise)
                continue
            except RuntimeError:  # the op refused F (dtype, device, shape or layout): the checked path says why
                pass
        if every_output_checked or f.dtype != dtype or f.device != device or f.shape != shape \
                or not f.is_contiguous():  # anything else than a state-like output: the context's checks
            slots[1] = f = _conformed(ctx, f, sigmas[i], checked_steps + i)
        entry = ops.get((kind, f.dtype))
        if entry is None:
            ops[(kind, f.dtype)] = ctx._fused_step(pick(slots), coeffs, num_noise, seeds if num_noise else None, i,
                                                   outs)
        else:
            entry[1](outs, pick(slots), coeffs, seeds if num_noise else None, i, num_noise)
    ctx.nfe = checked_steps + len(calls)
    return x
