"""fastint: fast integrators for diffusion models, every solver step one fused memory pass.

    x = fastint.sample(model, x, sigmas, solver="dpmpp_2m_sde", seed=0)

``model(x, sigma_batch, **extra_args)`` returns the denoised x0 (the k-diffusion / EDM convention); see
``fastint.models`` for adapters from eps-, v-, x0- and flow-prediction models.
"""

from . import models, ops, schedules
from .ops import list_backends, use_backend
from .sampling import sample
from .solvers import list_solvers

__version__ = "0.1.0"
__all__ = ["sample", "list_solvers", "list_backends", "use_backend", "schedules", "models", "ops"]
