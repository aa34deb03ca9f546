"""Solver base class: options, metadata (orders as numbers, ``nfe(steps)``) and the program protocol.

A solver is a host-side program (``fastint.solvers.program``): ``program(sigmas, x)`` yields requests and receives
their results; it holds no tensor operation. ``fastint.executor`` runs every program.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .program import Program, model_evaluations, record


@dataclass(frozen=True)
class Option:
    """A solver option: its default, a validity check and the message naming the valid values."""

    default: Any
    check: Callable[[Any], bool]
    valid: str


def non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def unit_interval_open(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def one_of(*values):
    return lambda v: v in values


NOISE_OPTIONS = {"eta": Option(1.0, non_negative, "a finite number >= 0"),
                 "s_noise": Option(1.0, non_negative, "a finite number >= 0")}


def example_sigmas(steps: int) -> List[float]:
    """A geometric grid of ``steps`` steps from 80 down to 0.002, then 0 (for counting model evaluations)."""
    if steps == 1:
        return [80.0, 0.0]
    return [80.0 * (0.002 / 80.0) ** (k / (steps - 1)) for k in range(steps)] + [0.0]


class Solver:
    """A sampling method. Subclasses set the class attributes and implement ``program(sigmas, x)``.

    ``order``: the global order (a number) of the ODE form with default options (measured in the tests);
    ``order_note`` says more (SDE forms, options that change it); ``nfe_per_step`` is the same count as text."""

    name: str = ""
    order: float = 1
    order_note: str = ""
    nfe_per_step: str = ""
    stochastic: bool = False
    summary: str = ""
    options: Dict[str, Option] = {}
    dropin_parameters: Optional[Tuple[str, ...]] = None   # k-diffusion/ComfyUI drop-in order of options + noise_sampler

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"solver {self.name!r}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        self.config = {k: opt.default for k, opt in self.options.items()}
        for key, value in options.items():
            if not self.options[key].check(value):
                raise ValueError(f"solver {self.name!r}: option {key}={value!r} is invalid: {self.options[key].valid}")
            self.config[key] = value

    def key(self) -> tuple:
        """The solver and its options (memo keys; unhashable when an option is, e.g. a dict)."""
        return (type(self),) + tuple(sorted(self.config.items()))

    def uses_noise(self) -> bool:
        """Whether this configured solver draws noise (stochastic solvers with eta = 0 or s_noise = 0 do not)."""
        return self.stochastic and self.config.get("eta", 1) != 0 and self.config.get("s_noise", 1) != 0

    def nfe(self, steps: int) -> int:
        """Model evaluations of a run of ``steps`` steps ending at sigma = 0 (counted on a dry run)."""
        return model_evaluations(record(self.program(example_sigmas(steps), 0)))

    def program(self, sigmas: Sequence[float], x) -> Program:
        raise NotImplementedError
