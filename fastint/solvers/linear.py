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
runs with cold caches, so the loop body is kept to the network call, its output check and one fused-op call).
Zero coefficients are dropped as ``combine`` drops them. State buffers rotate with period J + 1: x_{i+1} takes the
buffer of x_{i-J}, which step i reads for the last time (an exact alias, allowed). A network output in another
float dtype than the state enters the op as it is (the op converts per input; float64 is first converted to the
state's dtype). The results equal the generic loop's (``denoise_terms`` + ``combine``) up to the rounding of the
merged coefficients.
"""

import math
import weakref
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch

_OP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the op reads these per input


class LinearStep(NamedTuple):
    """Step i: ``x_{i+1} = a x_i + sum_j d[j] D_{i-j} + noise z_i``; ``d`` has the same length J + 1 at every step
    (zeros where the history is shorter)."""

    a: float
    d: Sequence[float]
    noise: float


def plannable(ctx) -> bool:
    """Whether ``run_linear`` can run this sampling call: a fastint adapter with a host path at every sigma that is
    evaluated, in-kernel (or no) noise, and no per-step callback or progress bar."""
    if ctx._host_plan is None or ctx.callback is not None or ctx.progress_bar is not None \
            or ctx.noise_sampler is not None:
        return False
    return all(ctx._host_plan(s) is not None for s in ctx.sigmas[:-1])


def _step_specs(steps: List[LinearStep], plans) -> List[Tuple[List[int], List[float], int, bool]]:
    """Per step: the slots it reads (indices into [x_i, F_i, x_{i-1}, F_{i-1}, ...]), its flattened coefficient
    rows (first row, noise, then c_in_{i+1} times both when it also writes the next network input), K and whether
    it writes that input."""
    specs, last = [], len(steps) - 1
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
        specs.append((pick, coeffs, num_noise, c_in_next != 1.0))
    return specs


_STEPS: Dict[tuple, List[LinearStep]] = {}            # (solver key, sigmas) -> steps
_SPECS = weakref.WeakKeyDictionary()                   # adapter -> {(solver key, sigmas, revision): (plans, specs)}
_MEMO_SIZE = 64                                         # entries per memo (oldest dropped first)


def _remember(memo: dict, key, value):
    if len(memo) >= _MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value
    return value


def run_linear(ctx, x: torch.Tensor, solver_key: tuple, make_steps: Callable[[], List[LinearStep]]) -> torch.Tensor:
    """Run the solver's steps (``make_steps()``: one per interval of ``ctx.sigmas``) from ``x``; see the module
    docstring. ``solver_key`` identifies the solver and its options: the steps, and per adapter the expanded
    coefficients, are computed once per (solver key, sigmas) and reused by later runs (they are host floats that
    depend on nothing else; an adapter's ``revision`` changes when one of its attributes is set)."""
    adapter, extra, sigmas, seeds = ctx.model, ctx.extra_args, ctx.sigmas, ctx.seeds
    key = (solver_key, tuple(sigmas))
    steps = _STEPS.get(key) or _remember(_STEPS, key, make_steps())
    try:
        per_adapter = _SPECS.setdefault(adapter, {})
    except TypeError:  # a model object that takes no weak reference: no memo
        per_adapter = {}
    adapter_key = key + (adapter.revision,)
    planned = per_adapter.get(adapter_key)
    if planned is None:
        plans = [ctx._host_plan(s) for s in sigmas[:len(steps)]]
        specs = _step_specs(steps, plans)
        coefficients = [c for spec in specs for c in spec[1]]
        if not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f"non-finite step coefficients {coefficients}: check the sigmas and solver options")
        planned = _remember(per_adapter, adapter_key, (plans, specs))
    plans, specs = planned
    t_batches = adapter.timestep_batches(x, [plan[3] for plan in plans])
    width = len(steps[0].d)
    pool = [torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device) for _ in range(min(width, len(steps)))]
    slots: List[torch.Tensor] = []
    ops = {}                # (inputs, noise streams, outputs, F's dtype) -> the op, once ctx has checked that kind
    x = x if x.is_contiguous() else x.contiguous()
    model_input = x if plans[0][0] == 1.0 else x * plans[0][0]
    for i, (pick, coeffs, num_noise, writes_input) in enumerate(specs):
        f = ctx._checked(adapter.network(model_input, t_batches[i], x, **extra), sigmas[i])
        if f.dtype != x.dtype and f.dtype not in _OP_DTYPES:
            f = f.to(x.dtype)
        if not f.is_contiguous():
            f = f.contiguous()
        slots = [x, f] + slots[:2 * width - 2]
        x = pool[(i + 1) % len(pool)]
        if writes_input:
            model_input = ctx._input_buffer()
            outs = [x, model_input]
        else:
            model_input, outs = x, [x]
        inputs = [slots[k] for k in pick]
        kind = (len(pick), num_noise, writes_input, f.dtype)
        op = ops.get(kind)
        if op is None:
            ops[kind] = ctx._fused_step(inputs, coeffs, num_noise, seeds if num_noise else None, i, outs)
        else:
            op(outs, inputs, coeffs, seeds if num_noise else None, i, num_noise)
    return x
