"""Augmented-space diffusion samplers: CLD (SSCS, Euler-Maruyama, probability flow) and PSLD (also the conjugate
and splitting integrators), every state update one fused-op call with outputs (x, v). See docs/augmented.md."""

from .adapters import (AugmentedModel, CLDMixedScore, ExactScore, PSLDEps, ScoreFunction, cld_mixed_net,
                       psld_eps_net)
from .processes import CLD, PSLD, AugmentedProcess, cholesky2
from .samplers import METHODS, nfe_per_step, sample_augmented, time_grid
from .target import AugmentedTarget

__all__ = ["CLD", "PSLD", "AugmentedProcess", "AugmentedTarget", "AugmentedModel", "ScoreFunction", "CLDMixedScore",
           "PSLDEps", "ExactScore", "cld_mixed_net", "psld_eps_net", "sample_augmented", "time_grid", "METHODS",
           "nfe_per_step", "cholesky2"]
