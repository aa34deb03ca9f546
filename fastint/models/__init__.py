"""Models: adapters from eps-/v-/x0-/flow-prediction models to the VE denoiser, and the analytic GaussianMixture."""

from .adapters import *  # noqa: F401,F403
from .adapters import __all__ as _adapter_names
from .gaussian_mixture import GaussianMixture, default_mixture

__all__ = ["GaussianMixture", "default_mixture", *_adapter_names]
