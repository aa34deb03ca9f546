"""Solver programs: the requests a solver yields, and the recorder that runs a program without any tensor.

A solver is a generator ``solver.program(sigmas, x)``: it yields requests and receives their results, and returns
the handle of the final state. Handles are opaque values the executor hands out (the recorder uses integers); a
program never looks inside one. The requests:

- ``Denoise(state, sigma)`` -> the handle of ``D(state, sigma)`` (one model evaluation). ``fuse=True`` lets the
  executor keep D as its adapter parts ``c_skip x + c_out F`` inside the next combinations instead of materialising
  it (the solvers that did so before keep doing so, the others keep their exact results). ``stage=False``: the
  network input ``c_in x`` is computed from the stored state, never written by the update that made the state in
  the same fused call (the first evaluation of a solver run inside another program: ``nested``);
- ``Combine(rows, noise)`` -> the handle of ``sum c h`` over one row of ``(coefficient, handle)`` terms, plus
  ``sum_k c_k z_k`` for the noise streams of ``noise = (NoiseEvent, coefficients)``; with several rows, a tuple
  of handles (one fused-op call writing every row; the noise enters the first row);
- ``Report(i, state, sigma, sigma_hat, denoised)``: step i is done (callback, progress bar);
- ``Gradient(fn, state, sigma)`` -> the handle of ``fn(state, sigma_batch)`` (classifier guidance).

Every coefficient is a host float computed in float64 from the sigmas, so the requests of a run never depend on
tensor values: ``record`` runs a program once with integer handles and the executor replays the recording.
"""

from typing import Any, Callable, Generator, List, NamedTuple, Optional, Sequence, Tuple

Handle = Any
Term = Tuple[float, Handle]


class NoiseEvent:
    """The noise of one state update: streams 0..K-1 at ``counter`` (in-kernel Philox noise), or, with an injected
    ``noise_sampler``, one tensor per stream drawn over that stream's sub-interval ``intervals[k]`` and reused by
    every combination of the event (SEEDS stages share one Brownian path).

    ``mixing`` (optional, lower triangular): when the injected draws are correlated by construction (k-diffusion's
    dpmpp_sde asks its Brownian sampler for ``(s, s_mid)`` and then ``(s, t)``), in-kernel stream k stands for
    ``sum_{m <= k} mixing[k][m] z_m`` over independent normals z_m, so a coefficient vector c over the streams becomes
    ``c @ mixing`` in the kernel (``kernel_coefficients``)."""

    __slots__ = ("counter", "intervals", "mixing")

    def __init__(self, counter: int, intervals: Sequence[Tuple[float, float]],
                 mixing: Optional[Sequence[Sequence[float]]] = None):
        self.counter, self.intervals = counter, tuple(intervals)
        self.mixing = None if mixing is None else tuple(tuple(float(v) for v in row) for row in mixing)

    def kernel_coefficients(self, coefficients: Sequence[float]) -> List[float]:
        """The coefficients of the independent in-kernel streams for ``coefficients`` over this event's streams."""
        if self.mixing is None:
            return list(coefficients)
        return [sum(c * row[m] for c, row in zip(coefficients, self.mixing) if m < len(row))
                for m in range(len(coefficients))]


class Denoise(NamedTuple):
    state: Handle
    sigma: float
    fuse: bool = True
    stage: bool = True


class Combine(NamedTuple):
    rows: Tuple[Tuple[Term, ...], ...]
    noise: Optional[Tuple[NoiseEvent, Tuple[float, ...]]] = None


class Report(NamedTuple):
    i: int
    state: Handle
    sigma: float
    sigma_hat: float
    denoised: Handle


class Gradient(NamedTuple):
    fn: Callable
    state: Handle
    sigma: float


Program = Generator[Any, Handle, Handle]


def combine(terms: Sequence[Term], noise: Optional[Tuple[NoiseEvent, Sequence[float]]] = None) -> Combine:
    """A one-row ``Combine`` request."""
    return Combine((tuple(terms),), None if noise is None else (noise[0], tuple(noise[1])))


def nested(program: Program, offset: int) -> Program:
    """``program`` run inside another as it runs alone: the step index of its reports shifted by ``offset``, and its
    first evaluation's network input computed from its initial state (``Denoise(stage=False)``), as when the
    solver starts a run of its own -- so a segment gives the bits of that solver run by itself."""
    sent, first = None, True
    while True:
        try:
            request = program.send(sent)
        except StopIteration as stop:
            return stop.value
        if type(request) is Report:
            request = request._replace(i=request.i + offset)
        elif first and type(request) is Denoise:
            request, first = request._replace(stage=False), False
        sent = yield request


class Tape(NamedTuple):
    """A recorded run: ``entries`` = [(request, output handles)] with integer handles (0 = the initial state),
    ``result`` the final state's handle."""

    entries: Tuple[Tuple[Any, Tuple[int, ...]], ...]
    result: int


def record(program: Program) -> Tape:
    """Run ``program`` (started on handle 0) to its end, answering every request with fresh integer handles.

    Raises ValueError when a request names a handle that no earlier request produced (a program bug)."""
    known, entries, sent, counter = {0}, [], None, 1

    def check(handle, what):
        if handle not in known:
            raise ValueError(f"solver program: {what} names {handle!r}, which no earlier request produced")

    while True:
        try:
            request = program.send(sent)
        except StopIteration as stop:
            check(stop.value, "the result")
            return Tape(tuple(entries), stop.value)
        kind = type(request)
        if kind is Combine:
            for row in request.rows:
                for _, handle in row:
                    check(handle, "a combination")
            outs = tuple(range(counter, counter + len(request.rows)))
            sent = outs[0] if len(outs) == 1 else outs
        elif kind is Denoise or kind is Gradient:
            check(request.state, kind.__name__)
            outs = (counter,)
            sent = counter
        elif kind is Report:
            check(request.state, "a report")
            check(request.denoised, "a report")
            outs, sent = (), None
        else:
            raise TypeError(f"solver program yielded {kind.__name__}; expected Denoise, Combine, Report or Gradient")
        counter += len(outs)
        known.update(outs)
        entries.append((request, outs))


def model_evaluations(tape: Tape) -> int:
    """The number of model evaluations of a recorded run."""
    return sum(1 for request, _ in tape.entries if type(request) is Denoise)


def reports(tape: Tape) -> List[Report]:
    return [request for request, _ in tape.entries if type(request) is Report]
