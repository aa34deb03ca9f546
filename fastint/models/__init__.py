"""Models: adapters from eps-/v-/x0-/flow-prediction models to the VE denoiser, and the analytic GaussianMixture."""

from .gaussian_mixture import GaussianMixture, default_mixture

__all__ = ["GaussianMixture", "default_mixture"]

try:  # the adapters module is optional while it is being written
    from . import adapters as _adapters
    from .adapters import *  # noqa: F401,F403
    __all__ += list(getattr(_adapters, "__all__", []))
except ImportError:  # pragma: no cover
    pass
