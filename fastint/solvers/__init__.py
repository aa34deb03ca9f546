"""The solver registry: ``get_solver(name, **options)`` and ``list_solvers()``."""

from typing import Dict, List, Type

from .adams import DEIS, IPNDM, IPNDMVariable
from .ancestral import DDIM, EulerAncestral
from .base import Solver
from .dpm_single import DPM2, DPM2Ancestral, DPMpp2SAncestral, DPMppSDE
from .dpmpp import DPMpp2M, DPMpp2MSDE, DPMpp3M, DPMpp3MSDE
from .edm import Euler, Heun
from .er_sde import ErSDE
from .gradient_estimation import GradientEstimation
from .heunpp import HeunPP2
from .lms import LMS
from .renoise import DDPM, LCM
from .res import ResMultistep, ResMultistepAncestral
from .restart import Restart
from .sa_solver import SASolver, SASolverPECE
from .seeds import ExpHeun2X0, ExpHeun2X0SDE, Seeds1, Seeds2, Seeds3
from .splitting import LieTrotter, PLMS, Strang

SOLVERS: Dict[str, Type[Solver]] = {cls.name: cls for cls in (
    Euler, Heun, DDIM, EulerAncestral, DPMpp2M, DPMpp3M, DPMpp2MSDE, DPMpp3MSDE, Seeds1, Seeds2, Seeds3,
    Restart, PLMS, LieTrotter, Strang,
    HeunPP2, DDPM, LCM, IPNDM, IPNDMVariable, DEIS,
    ResMultistep, ResMultistepAncestral, GradientEstimation, ErSDE, SASolver, SASolverPECE, ExpHeun2X0, ExpHeun2X0SDE,
    DPM2, DPM2Ancestral, LMS, DPMpp2SAncestral, DPMppSDE)}


def get_solver(name: str, **options) -> Solver:
    """The configured solver ``name``; unknown names and options raise, naming the valid ones."""
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[name](**options)


def list_solvers() -> List[dict]:
    """Every solver with its order (a number; ``order_note`` says more), model evaluations (``nfe(steps)`` with the
    default options, a function; ``nfe_per_step`` as text), stochasticity and options with defaults."""
    return [{"name": cls.name, "order": cls.order, "order_note": cls.order_note, "nfe": _nfe(cls),
             "nfe_per_step": cls.nfe_per_step, "stochastic": cls.stochastic,
             "options": {k: opt.default for k, opt in cls.options.items()}, "summary": cls.summary}
            for cls in SOLVERS.values()]


def _nfe(cls: Type[Solver]):
    """``steps -> model evaluations`` of ``cls`` with its default options (guided solvers get a stand-in guidance
    function: guidance evaluations are not model evaluations)."""
    try:
        solver = cls()
    except ValueError:   # guided solvers need a guidance function; its evaluations are not model evaluations
        solver = cls(guidance=lambda x, sigma: x)
    return solver.nfe
