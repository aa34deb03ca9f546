"""diffusers schedulers that run fastint's solvers: ``pipe.scheduler = FastintScheduler.from_config(pipe.scheduler.config,
solver="seeds_2")``.

How it works
------------
diffusers pipelines run ``for t in scheduler.timesteps: out = model(sample, t); sample = scheduler.step(out, t,
sample).prev_sample``: one model call per ``step``. A fastint solver is a host program run by ``fastint.executor``,
which yields each network evaluation it needs (the model input, in the model's coordinates) and receives the
network output. ``FastintScheduler`` drives that generator from ``step`` in the pipeline's own thread: each
``step`` sends the output for the pending evaluation and returns the next model input (model coordinates) or the
state it is made from (VE coordinates) as ``prev_sample`` (or the final result). No helper thread: whatever the caller's thread set (``fastint.use_backend``, ``torch.autocast``,
grad mode, the CUDA stream) applies, and the result is ``fastint.sample(adapter(model), x, sigmas, solver,
seed=...)`` (same executor, same op calls; the first model output is the pipeline's, made at its own sample rather
than at ``c_in x~_0``, which differs from it by rounding). An abandoned run leaves nothing behind: the next ``set_timesteps``
starts a fresh one. A run is bound to the pipeline driving it: a ``step`` from another thread during a run, or with
a timestep that is not the pending one (two pipelines interleaving their steps), or from a thread whose unfinished
run another thread's ``set_timesteps`` ended, raises a clear error.

- ``timesteps`` holds one entry per model call (like diffusers' ``HeunDiscreteScheduler``); ``order`` is the number
  of model calls per solver step (Heun 2), as pipelines use it for part-way starts.
- The grid follows the scheduler whose config it is built from (``peer``): ``from_config`` of a
  ``DPMSolverMultistepScheduler``, ``EulerDiscreteScheduler`` or ``HeunDiscreteScheduler`` config builds that
  scheduler and takes its noise levels and timesteps (every spacing / sigma / final-sigma option of it applies, as
  diffusers computes them); other configs (DDPM, DDIM, flow matching) get fastint's own grid (``peer="fastint"``
  asks for it explicitly). Entries the source config left at its class's defaults keep those defaults.
- State coordinates: "model" (``DPMSolverMultistepScheduler`` / ``DDIMScheduler``'s: ``x_vp = alpha x~`` for VP
  models, ``x_flow = (1 - t) x~`` for rectified flow; ``init_noise_sigma = 1``, ``scale_model_input`` is the
  identity; the initial sample is read as the model-coordinate state at the first noise level) or "ve" (Euler's
  and Heun's: the sample is ``x~``, ``init_noise_sigma`` is theirs, ``scale_model_input`` divides by
  ``sqrt(sigma^2 + 1)``). Default: the peer's; ``coordinates=`` overrides.
- From a DPM config, ``dpmpp_2m`` / ``dpmpp_3m`` step as ``DPMSolverMultistepScheduler`` does (its warm-up, lower
  order final steps, ``solver_type``: ``fastint.integrations.diffusers_dpm``); with no solver named the config's
  ``solver_order`` / ``algorithm_type`` pick it.
- ``thresholding`` / ``clip_sample`` act on the data prediction: the model output handed to the solver is the one
  whose data prediction is the thresholded / clipped one. Options with no fastint counterpart raise, naming them.
- Part-way starts (img2img, inpainting): ``set_begin_index(k)`` starts the next run at model call k (the first call
  of a solver step), on the grid's tail; ``add_noise`` uses the noise level diffusers' schedulers pick (the begin
  index before the run, the pending call during it) in the scheduler's coordinates.
- A sample the pipeline changed between steps (inpainting masks, ``callback_on_step_end``) is written back into the
  solver's state before the model output is used.
- Model outputs are copied when the solver keeps them past the next model call (the pipeline still holds them).
- Gradients: with grad mode on, ``prev_sample`` carries gradients to the model output and the sample (the fused op
  is differentiable), as diffusers' own schedulers' does.
- Noise: fastint's per-sample counter-based noise (``docs/noise.md``). The seeds come from ``set_seed`` /
  ``set_timesteps(seed=...)`` when given (int: sample b uses seed + b; or one per sample), else from the
  ``generator`` passed to ``step`` (one int drawn from it; a list of generators gives one seed per sample, as
  diffusers' per-sample generators do), else from torch's default generator.

Prediction types: ``epsilon``, ``v_prediction``, ``sample`` (discrete VP models, ``DiscreteVPDenoiser``) and ``flow``
(rectified flow, ``FlowDenoiser`` with ``timestep = 1000 t``). ``prediction_type=None`` infers it from the config:
``flow`` for a flow-matching scheduler's config (``FlowMatch*`` class name or a ``shift`` entry), else ``epsilon``.
"""

import inspect
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput

from .. import executor
from ..models import DiscreteVPDenoiser, FlowDenoiser
from ..sampling import _sigma_list, per_sample_seeds
from ..solvers.program import Denoise
from ..schedules import (alphas_cumprod_from_betas, betas_linear, betas_scaled_linear, exponential, flow, karras,
                         vp_discrete)
from ..solvers import SOLVERS, get_solver
from .diffusers_config import (DPM_OPTIONS, DPM_SDE_SOLVERS, DPM_SOLVERS, GRID_OPTIONS, PEERS, VE_PEERS,
                              decreasing, dynamic_threshold, same, source_defaults)
from .diffusers_dpm import DiffusersDPMSolverPP

__all__ = ["FastintScheduler", "FastintSEEDSScheduler", "FastintRestartScheduler", "FastintDPMSolverScheduler",
           "FastintHeunScheduler", "FastintSchedulerOutput"]

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")
PREDICTION_TYPES = VP_PREDICTIONS + ("flow",)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SIGMA_SCHEDULES = ("discrete", "karras", "exponential")
COORDINATES = ("model", "ve")


@dataclass
class FastintSchedulerOutput(BaseOutput):
    """``prev_sample``: the next sample (or the final result), in the scheduler's coordinates;
    ``pred_original_sample``: the latest denoised estimate (updated once per solver step), or None."""

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


def _no_network(*_, **__):
    raise AssertionError("FastintScheduler: the pipeline evaluates the network, the executor never calls it")


class _DrivenRun:
    """One run of the executor's generator, advanced by ``step`` in the thread that started it."""

    def __init__(self, steps, run, owner: int):
        self.steps, self.run, self.owner = steps, run, owner
        self.pending = None        # the request (model input, timestep batch, state) awaiting its network output
        self.denoised = None

    def record(self, info):
        self.denoised = info["denoised"]

    def close(self):
        self.steps.close()


def _cosine_betas(n_train: int) -> torch.Tensor:
    """diffusers' ``squaredcos_cap_v2`` (``betas_for_alpha_bar``, cosine), float32 as diffusers computes it."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / n_train) / f(i / n_train), 0.999) for i in range(n_train)],
                        dtype=torch.float32)


class FastintScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running any fastint solver (``solver`` and its ``solver_options``).

    Config (diffusers names, so ``from_config(other_scheduler.config)`` carries them over): ``num_train_timesteps``,
    ``beta_start``, ``beta_end``, ``beta_schedule`` (linear, scaled_linear, squaredcos_cap_v2), ``trained_betas``,
    ``prediction_type`` (epsilon, v_prediction, sample, flow; None infers), ``timestep_spacing`` (leading,
    linspace, trailing; None: the peer's default, "leading" on fastint's grid) and ``steps_offset``, ``use_karras_sigmas`` /
    ``use_exponential_sigmas`` (or ``sigma_schedule`` = discrete, karras, exponential; ``rho``), ``variance_type``
    (learned / learned_range: the model's extra variance channels are dropped), flow models: ``shift``,
    ``use_dynamic_shifting`` (then the pipeline passes ``mu`` to ``set_timesteps``); ``thresholding``
    (``dynamic_thresholding_ratio``, ``sample_max_value``) and ``clip_sample`` (``clip_sample_range``) on the data
    prediction. ``peer``: the diffusers scheduler whose grid (noise levels, timesteps; the options of
    ``GRID_OPTIONS``) and state coordinates to follow: ``DPMSolverMultistepScheduler``, ``EulerDiscreteScheduler``,
    ``HeunDiscreteScheduler`` (``from_config`` sets it from such a config), or "fastint" / None: fastint's own.
    ``coordinates``: "model" (the pipeline's sample is the model's input, ``init_noise_sigma = 1``) or "ve"
    (Euler's: sample = x~, ``scale_model_input`` divides by sqrt(sigma^2 + 1)); None: the peer's. fastint's own:
    ``solver``, ``solver_options`` (dict), ``backend``, ``quantize_timesteps`` (integer timesteps for discrete
    models; None: the peer's convention).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    default_solver = "dpmpp_2m"

    @register_to_config
    def __init__(self, solver: Optional[str] = None, solver_options: Optional[dict] = None,
                 num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
                 prediction_type: Optional[str] = None, timestep_spacing: Optional[str] = None, steps_offset: int = 0,
                 variance_type: Optional[str] = None, sigma_schedule: Optional[str] = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, rho: float = 7.0,
                 shift: Optional[float] = None, use_dynamic_shifting: bool = False,
                 rescale_betas_zero_snr: bool = False, quantize_timesteps: Optional[bool] = None,
                 backend: str = "auto", peer: Optional[str] = None, coordinates: Optional[str] = None,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 clip_sample: bool = False, clip_sample_range: float = 1.0,
                 solver_order: Optional[int] = None, algorithm_type: Optional[str] = None,
                 solver_type: Optional[str] = None, lower_order_final: Optional[bool] = None,
                 euler_at_final: Optional[bool] = None, use_beta_sigmas: Optional[bool] = None,
                 use_lu_lambdas: Optional[bool] = None, use_flow_sigmas: Optional[bool] = None,
                 flow_shift: Optional[float] = None, final_sigmas_type: Optional[str] = None,
                 lambda_min_clipped: Optional[float] = None, interpolation_type: Optional[str] = None,
                 timestep_type: Optional[str] = None, sigma_min: Optional[float] = None,
                 sigma_max: Optional[float] = None, time_shift_type: Optional[str] = None):
        name = type(self).__name__
        cfg = dict(self.config)
        peer = None if peer in (None, "fastint") else peer
        if peer is not None and peer not in PEERS:
            raise ValueError(f"{name}: unknown peer {peer!r}; valid ones are 'fastint', "
                             f"{', '.join(map(repr, PEERS))}")
        if prediction_type is None:
            prediction_type = "flow" if shift is not None or use_dynamic_shifting else "epsilon"
        aliases = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "flow_prediction": "flow"}
        prediction_type = aliases.get(prediction_type, prediction_type)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{name}: unknown prediction_type {prediction_type!r}; valid ones are "
                             f"{', '.join(map(repr, PREDICTION_TYPES))}")
        if sigma_schedule is None:
            sigma_schedule = "karras" if use_karras_sigmas else "exponential" if use_exponential_sigmas else "discrete"
        if sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"{name}: unknown sigma_schedule {sigma_schedule!r}; valid ones are "
                             f"{', '.join(map(repr, SIGMA_SCHEDULES))}")
        if coordinates is None:
            coordinates = "ve" if peer in VE_PEERS else "model"
        if coordinates not in COORDINATES:
            raise ValueError(f"{name}: unknown coordinates {coordinates!r}; valid ones are 'model', 've'")
        if coordinates == "ve" and prediction_type == "flow":
            raise ValueError(f"{name}: coordinates='ve' is for VP models (Euler's convention); a flow model's sample "
                             "stays in its own coordinates")
        solver, options, emulated = self._resolve_solver(solver, dict(solver_options or {}), peer, cfg)
        self.register_to_config(solver=solver, solver_options=options, prediction_type=prediction_type,
                                sigma_schedule=sigma_schedule)
        self._peer = None
        if peer is not None:
            self._peer = self._build_peer(peer, prediction_type, sigma_schedule, rho, cfg)
            self.alphas_cumprod = self._peer.alphas_cumprod.to(torch.float64)
            self.betas = self._peer.betas.clone()
        else:
            bad = [f"{k}={cfg[k]!r}" for k, default in GRID_OPTIONS.items()
                   if cfg.get(k) is not None and not same(cfg[k], default)]
            if bad:
                raise ValueError(f"{name}: {', '.join(bad)} shape(s) a diffusers scheduler's grid, not fastint's: "
                                 "build from that scheduler's config (peer=...) or drop the option")
        if peer is None and prediction_type == "flow":
            self.shift = 1.0 if shift is None else float(shift)
            if not self.shift > 0:
                raise ValueError(f"{name}: shift must be > 0, got {shift!r}")
            self.alphas_cumprod = self.betas = None
        elif peer is None:
            if rescale_betas_zero_snr:
                raise ValueError(f"{name}: rescale_betas_zero_snr=True gives alphas_cumprod[-1] = 0, an infinite VE "
                                 "noise level that fastint's own grid cannot start from; build from the config of "
                                 "EulerDiscreteScheduler or DPMSolverMultistepScheduler (their grids cap it), or "
                                 "use a config without it")
            if trained_betas is not None:
                betas = torch.as_tensor(np.asarray(trained_betas), dtype=torch.float32)
            elif beta_schedule == "linear":
                betas = betas_linear(num_train_timesteps, beta_start, beta_end)
            elif beta_schedule == "scaled_linear":
                betas = betas_scaled_linear(num_train_timesteps, beta_start, beta_end)
            elif beta_schedule == "squaredcos_cap_v2":
                betas = _cosine_betas(num_train_timesteps)
            else:
                raise ValueError(f"{name}: beta_schedule {beta_schedule!r} is not supported (the "
                                 f"config needs one of {', '.join(map(repr, BETA_SCHEDULES))} or trained_betas)")
            self.betas = betas.to(torch.float32)
            self.alphas_cumprod = alphas_cumprod_from_betas(betas).to(torch.float64)
        for key, value in (("clip_sample_range", clip_sample_range), ("sample_max_value", sample_max_value)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name}: {key} must be a number > 0, got {value!r}")
        if not isinstance(dynamic_thresholding_ratio, (int, float)) or not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"{name}: dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio!r}")
        self._peer_name = peer
        self._coordinates = coordinates
        self._emulated = emulated                       # DPMSolverMultistepScheduler's own step orders, or None
        self._solver = get_solver(solver, **options) if emulated is None else DiffusersDPMSolverPP(**emulated)
        self._run_solver = self._solver
        if quantize_timesteps is None:
            quantize_timesteps = peer not in VE_PEERS
        self._quantize = bool(quantize_timesteps)
        T = num_train_timesteps
        if self._peer is not None:
            self.timesteps = self._peer.timesteps.clone()
        elif prediction_type == "flow":
            self.timesteps = torch.linspace(T, 1, T, dtype=torch.float32)
        else:
            self.timesteps = torch.arange(T - 1, -1, -1, dtype=torch.int64)
        self.sigmas: Optional[torch.Tensor] = None
        self.plan_sigmas: Optional[List[float]] = None
        self._noop = 0
        self.num_inference_steps: Optional[int] = None
        self._seed = None
        self._run: Optional[_DrivenRun] = None
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._returned = None
        self._stepping = threading.Lock()
        self._superseded: Optional[int] = None   # the thread whose unfinished run another thread's set_timesteps ended
        self._network_adapter = self._adapter(_no_network)
        self._order = max(1, self._solver.nfe(3) - self._solver.nfe(2))

    def _resolve_solver(self, solver, options, peer, cfg):
        """(solver name, its options, the options of the DPMSolverMultistepScheduler emulation or None)."""
        name = type(self).__name__
        dpm = {k: (cfg.get(k) if cfg.get(k) is not None else default) for k, default in DPM_OPTIONS.items()}
        on_dpm = peer == "DPMSolverMultistepScheduler"
        consumed = set()     # DPM options a fastint solver named after them implements
        if on_dpm and solver is None and type(self).default_solver == "dpmpp_2m":
            algorithm, order = dpm["algorithm_type"], dpm["solver_order"]
            if algorithm == "dpmsolver++" and order in DPM_SOLVERS:
                solver = DPM_SOLVERS[order]
            elif algorithm == "sde-dpmsolver++" and order in DPM_SDE_SOLVERS:
                solver = DPM_SDE_SOLVERS[order]
                consumed |= {"algorithm_type", "solver_order"}
                if solver == "dpmpp_2m_sde":
                    options.setdefault("solver_type", dpm["solver_type"])
                    consumed.add("solver_type")
            else:
                raise ValueError(f"{name}: DPMSolverMultistepScheduler's algorithm_type={algorithm!r} with "
                                 f"solver_order={order!r} has no fastint counterpart (dpmsolver++ orders 1-3 and "
                                 "sde-dpmsolver++ orders 2-3 have); name a solver with solver=...")
        solver = solver if solver is not None else type(self).default_solver
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"{name}: unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
        get_solver(solver, **options)  # validates the options now, naming the valid ones
        if on_dpm and (solver in ("dpmpp_2m", "dpmpp_3m") or (solver == "ddim" and dpm["solver_order"] == 1)):
            if dpm["algorithm_type"] != "dpmsolver++":
                raise ValueError(f"{name}: algorithm_type={dpm['algorithm_type']!r} is not DPM-Solver++ in data "
                                 f"prediction, which solver {solver!r} is; drop the option or name another solver")
            if options:
                raise ValueError(f"{name}: solver_options {options} are not available when {solver!r} steps as "
                                 "DPMSolverMultistepScheduler does; pass peer='fastint' for fastint's own solver")
            emulated = {"solver_order": {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3}[solver],
                        "solver_type": dpm["solver_type"], "lower_order_final": dpm["lower_order_final"],
                        "euler_at_final": dpm["euler_at_final"]}
            return solver, options, emulated
        bad = [f"{k}={dpm[k]!r}" for k, default in DPM_OPTIONS.items()
               if on_dpm and k not in consumed and not same(dpm[k], default)]
        if bad:
            raise ValueError(f"{name}: {', '.join(bad)} describe(s) DPMSolverMultistepScheduler's steps, which "
                             f"solver {solver!r} does not take; drop the option(s) (pass them as None) or use "
                             "solver='dpmpp_2m' / 'dpmpp_3m' on that scheduler's config")
        return solver, options, None

    def _build_peer(self, peer, prediction_type, sigma_schedule, rho, cfg):
        """The diffusers scheduler whose grid this one follows, built from the options it takes."""
        name = type(self).__name__
        cls = PEERS[peer]
        if cfg.get("use_flow_sigmas"):
            raise ValueError(f"{name}: use_flow_sigmas=True (a flow model on DPMSolverMultistepScheduler's grid) is "
                             "not supported; use a FlowMatchEulerDiscreteScheduler config")
        if prediction_type == "flow":
            raise ValueError(f"{name}: peer={peer!r} follows a VP model's grid; a flow model uses fastint's own grid "
                             "(peer='fastint')")
        if sigma_schedule == "karras" and rho != 7.0:
            raise ValueError(f"{name}: {peer}'s Karras sigmas use rho = 7, got rho={rho!r}")
        accepted = set(inspect.signature(cls.__init__).parameters)
        common = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "timestep_spacing", "steps_offset", "rescale_betas_zero_snr"}
        kwargs = {k: cfg[k] for k in common | set(GRID_OPTIONS) if cfg.get(k) is not None}
        kwargs.update(prediction_type=prediction_type, use_karras_sigmas=sigma_schedule == "karras",
                      use_exponential_sigmas=sigma_schedule == "exponential")
        refused = sorted(k for k in kwargs if k not in accepted and not same(kwargs[k], GRID_OPTIONS.get(k, False)))
        if refused:
            raise ValueError(f"{name}: {', '.join(f'{k}={kwargs[k]!r}' for k in refused)} is not an option of "
                             f"{peer}, whose grid this scheduler follows")
        return cls(**{k: v for k, v in kwargs.items() if k in accepted})

    def __getstate__(self):
        """Copies and pickles carry the configuration and schedule, never a run in progress."""
        state = dict(self.__dict__)
        state.update(_run=None, _step_index=None, _returned=None, _stepping=None, _superseded=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stepping = threading.Lock()

    # -- configuration -----------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``, keeping what the source scheduler's config means: the entries it left at
        its class's defaults, and its grid when fastint follows that scheduler (``peer``)."""
        if config is not None and not isinstance(config, Mapping) and hasattr(config, "config"):
            config = config.config
        if isinstance(config, Mapping):
            config = source_defaults(dict(config), kwargs, set(inspect.signature(cls.__init__).parameters),
                                     cls._compatibles)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def solver(self) -> str:
        return self.config.solver

    @property
    def order(self) -> int:
        """Model calls per solver step (Heun: 2), as diffusers' ``order``: pipelines start part-way at
        ``timesteps[t_start * order]``."""
        return self._order

    @property
    def init_noise_sigma(self):
        """1 in model coordinates; in VE coordinates the peer's (Euler / Heun: sigma_max, or sqrt(sigma_max^2 + 1)
        for "leading" spacing), else sqrt(sigma_0^2 + 1)."""
        if self._coordinates == "model":
            return 1.0
        if self._peer_name in VE_PEERS:
            return self._peer.init_noise_sigma
        sigma = float(self.sigmas[0]) if self.sigmas is not None else \
            float(((1 - self.alphas_cumprod[-1]) / self.alphas_cumprod[-1]).sqrt())
        return math.sqrt(sigma * sigma + 1)

    @property
    def step_index(self) -> Optional[int]:
        """The index in ``timesteps`` of the next model call of the current run (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start the next run at ``timesteps[begin_index]`` (img2img: ``t_start * order``); it must be the first
        model call of a solver step."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"{type(self).__name__}: begin_index must be an int >= 0, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def __len__(self):
        return self.config.num_train_timesteps

    def set_seed(self, seed) -> None:
        """Seeds of the per-sample noise for the following runs: an int (sample b uses seed + b), a list / 1-D
        tensor of per-sample seeds, or None (use the ``generator`` passed to ``step`` or torch's default one)."""
        self._seed = seed

    def _adapter(self, inner):
        if self.config.prediction_type == "flow":
            return FlowDenoiser(inner, timestep_scale=float(self.config.num_train_timesteps), prediction_type="flow")
        return DiscreteVPDenoiser(inner, decreasing(self.alphas_cumprod), prediction_type=self.config.prediction_type,
                                  quantize=self._quantize)

    def _sigma_grid(self, n: Optional[int], timesteps, sigmas, mu) -> torch.Tensor:
        """fastint's own grid: VE sigmas ending at 0."""
        cfg = self.config
        name = type(self).__name__
        if cfg.prediction_type == "flow":
            T = cfg.num_train_timesteps
            if timesteps is not None:
                raise ValueError(f"{name}: custom timesteps are not supported for flow models; pass sigmas")
            if cfg.use_dynamic_shifting and mu is None:
                raise ValueError(f"{name}: use_dynamic_shifting=True needs the pipeline to pass mu "
                                 "to set_timesteps")
            shift = math.exp(mu) if cfg.use_dynamic_shifting else self.shift
            if sigmas is None:
                return flow(n, shift, num_train_timesteps=T, dynamic_shifting=bool(cfg.use_dynamic_shifting))
            u = np.asarray(sigmas, dtype=np.float64)  # diffusers' custom flow sigmas: unshifted times in (0, 1]
            t = shift * u / (1 + (shift - 1) * u)
            t_max = shift * (1 - 1 / T) / (1 + (shift - 1) * (1 - 1 / T))
            t = np.minimum(t, t_max)
            grid = torch.from_numpy(t / (1 - t))
        elif timesteps is not None:
            ab = self.alphas_cumprod[torch.as_tensor(timesteps, dtype=torch.int64)]
            grid = ((1 - ab) / ab).sqrt()
        elif sigmas is not None:
            grid = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))  # VE sigmas, as EulerDiscreteScheduler's
        else:
            model_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
            lo, hi = float(model_sigmas[0]), float(model_sigmas[-1])
            if cfg.sigma_schedule == "karras":
                return karras(n, lo, hi, cfg.rho)
            if cfg.sigma_schedule == "exponential":
                return exponential(n, lo, hi)
            return vp_discrete(self.alphas_cumprod, n, spacing=cfg.timestep_spacing or "leading",
                               steps_offset=cfg.steps_offset, convention="ddim").sigmas
        if grid.numel() and float(grid[-1]) != 0.0:
            grid = torch.cat([grid, grid.new_zeros(1)])
        return grid

    def _peer_grid(self, n: Optional[int], timesteps, sigmas):
        """The peer's grid (VE sigmas of the solver steps) and {sigma of a model call: the peer's timestep}."""
        peer, name = self._peer, type(self).__name__
        accepted = inspect.signature(peer.set_timesteps).parameters
        if sigmas is not None and "sigmas" not in accepted:   # DPM / Heun: custom VE sigmas, fastint's side
            grid = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
            if grid and grid[-1] != 0:
                final = self.config.final_sigmas_type or "zero"
                grid.append(0.0 if final == "zero" else float(((1 - peer.alphas_cumprod[0]) /
                                                               peer.alphas_cumprod[0]) ** 0.5))
            return torch.tensor(grid, dtype=torch.float64), {}
        if timesteps is not None and "timesteps" not in accepted:
            raise ValueError(f"{name}: {self._peer_name} takes no custom timesteps")
        kwargs = {"num_inference_steps": n}
        if timesteps is not None:
            kwargs = {"timesteps": list(timesteps)}
        if sigmas is not None:
            kwargs = {"sigmas": list(np.asarray(sigmas, dtype=np.float64).reshape(-1))}
        peer.set_timesteps(**kwargs)
        s, t = peer.sigmas.to(torch.float64).tolist(), peer.timesteps.tolist()
        known = {s[k]: t[k] for k in range(len(t))}
        # one model call per step but Heun's (two, the first and last steps' one); Euler's "log_linear"
        # interpolation has one level more than its steps reach: the grid ends where the last step goes
        grid = s[0:-1:2] + s[-1:] if self._peer_name == "HeunDiscreteScheduler" else s[:len(t) + 1]
        return torch.tensor(grid, dtype=torch.float64), known

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device] = None,
                      timesteps: Optional[Sequence[int]] = None, sigmas: Optional[Sequence[float]] = None,
                      mu: Optional[float] = None, *, seed=None):
        """Build the noise levels and ``timesteps`` (one per model call) of ``num_inference_steps`` solver steps,
        or of custom ``timesteps`` (training timesteps, descending) or ``sigmas`` (VE sigmas for VP models,
        unshifted flow times for flow models), as diffusers' schedulers take them (exactly one of the three).
        ``mu``: the dynamic-shift parameter flow pipelines pass; ``seed``: as ``set_seed``."""
        name = type(self).__name__
        self._note_superseded_run()
        self._cancel()
        if seed is not None:
            self._seed = seed
        if timesteps is not None and sigmas is not None:
            raise ValueError(f"{name}.set_timesteps: pass only one of `timesteps` or `sigmas`")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError(f"{name}.set_timesteps: pass exactly one of `num_inference_steps`, `timesteps` or "
                             "`sigmas`")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError(f"{name}.set_timesteps: pass only one of `num_inference_steps`, `timesteps` or "
                             "`sigmas`")
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or not isinstance(
                num_inference_steps, (int, np.integer)) or num_inference_steps < 1):
            raise ValueError(f"{name}: num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        custom = timesteps if timesteps is not None else sigmas
        if custom is not None and len(custom) < 1:
            raise ValueError(f"{name}.set_timesteps: custom timesteps / sigmas must not be empty")
        if timesteps is not None and self._peer is None:
            ts = [int(t) for t in timesteps]
            if any(not 0 <= t < self.config.num_train_timesteps for t in ts) or \
                    any(a <= b for a, b in zip(ts, ts[1:])):
                raise ValueError(f"{name}.set_timesteps: custom timesteps must be strictly decreasing training "
                                 f"timesteps in [0, {self.config.num_train_timesteps}), got {ts}")
        if self._peer is not None:
            if mu is not None:
                raise ValueError(f"{name}.set_timesteps: mu (dynamic shifting of a flow model's schedule) does not "
                                 f"apply to {self._peer_name}'s grid")
            grid, known = self._peer_grid(num_inference_steps, timesteps, sigmas)
        else:
            grid = self._sigma_grid(num_inference_steps, timesteps, sigmas, mu)
            known = {} if timesteps is None else {float(s): int(t) for s, t in zip(grid.tolist(), timesteps)}
        # DPM's "sigma_min" final level on a grid that reaches timestep 0 repeats it: a last step of length 0 (a
        # model call that leaves the sample as it is), which the solver's grid leaves out
        noop = len(grid) > 2 and float(grid[-1]) == float(grid[-2]) > 0
        if noop:
            grid = grid[:-1]
        steps = len(grid) - 1 + noop
        self._run_solver = self._solver if self._emulated is None else \
            DiffusersDPMSolverPP(**self._emulated, schedule_steps=steps, trailing_steps=int(noop))
        # the recorded program: the noise level of every model call, and the timestep of each
        tape = executor.recording(self._run_solver, _sigma_list(grid))
        plan_sigmas = [request.sigma for request, _ in tape.entries if type(request) is Denoise]
        plan_sigmas += [float(grid[-1])] * noop
        self._noop = int(noop)
        adapter = self._network_adapter
        probe = torch.zeros(1, 1, dtype=torch.float32)
        ts = [known[s] if s in known else adapter.host_plan(s)[3] for s in plan_sigmas]
        dtype = self._peer.timesteps.dtype if self._peer is not None else adapter._timestep_dtype(probe)
        self.sigmas = grid
        self.num_inference_steps = steps
        self.timesteps = torch.tensor(ts, dtype=dtype).to(device)
        self.plan_sigmas = plan_sigmas  # the VE noise level of every model call (host floats)
        self._call_sigmas = torch.tensor(plan_sigmas, dtype=torch.float32)
        self._step_index = None
        self._begin_index = None
        self._returned = None

    def _note_superseded_run(self) -> None:
        """``set_timesteps`` from another thread than that of an unfinished run: remember that thread, so that a
        step it sends without starting a run of its own is refused (two pipelines driving one scheduler at once)
        rather than silently starting a run part-way (an interrupted run's thread calls ``set_timesteps`` first)."""
        me = threading.get_ident()
        if self._run is not None and self._run.owner != me:
            self._superseded = self._run.owner
        elif self._superseded == me:
            self._superseded = None

    def _index_for_timestep(self, timestep) -> int:
        """The model call of ``timestep`` (diffusers' rule: the second match when it appears twice)."""
        t = timestep.to(self.timesteps.device) if isinstance(timestep, torch.Tensor) else timestep
        indices = (self.timesteps == t).nonzero()
        if len(indices) == 0:
            raise ValueError(f"{type(self).__name__}: timestep {float(timestep):g} is not in the schedule "
                             f"(timesteps: {self.timesteps.tolist()})")
        return int(indices[1 if len(indices) > 1 else 0])

    def _first_index(self, timestep) -> int:
        """The model call a run starts at: ``begin_index`` when set, else that of ``timestep``, else 0."""
        if self._begin_index is not None:
            return self._begin_index
        if isinstance(timestep, (int, float, np.integer, np.floating)) or \
                (isinstance(timestep, torch.Tensor) and timestep.numel() == 1):
            if float(timestep) != float(self.timesteps[0]) and bool((self.timesteps == float(timestep)).any()):
                return self._index_for_timestep(timestep)
        return 0

    def _pending_index(self, timestep) -> int:
        return self._step_index if self._step_index is not None else self._first_index(timestep)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Model coordinates: the identity (the sample is already the model input). VE coordinates: ``sample /
        sqrt(sigma^2 + 1)`` at the pending model call's sigma (float32, as Euler's)."""
        if self._coordinates == "model":
            return sample
        if self.num_inference_steps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps before scale_model_input")
        sigma = self._call_sigmas[self._pending_index(timestep)]
        return sample / ((sigma ** 2 + 1) ** 0.5)

    # -- the run -----------------------------------------------------------------------------------------------
    def _coefficient(self, sigma: float) -> float:
        """The pipeline's sample per unit of the VE state at the host float ``sigma``: alpha (model coordinates,
        as the adapter's host path has it) or 1 (VE coordinates)."""
        if self._coordinates == "ve":
            return 1.0
        return 1.0 / (1.0 + sigma) if self.config.prediction_type == "flow" else 1.0 / math.sqrt(1.0 + sigma * sigma)

    def _seeds(self, batch: int, generator, device) -> torch.Tensor:
        if self._seed is not None:
            return per_sample_seeds(self._seed, batch, device)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(f"{type(self).__name__}: got {len(generator)} generators for a batch of {batch}")
            return torch.tensor([self._draw(g) for g in generator], dtype=torch.int64, device=device)
        if generator is not None:
            return per_sample_seeds(self._draw(generator), batch, device)
        return per_sample_seeds(None, batch, device)

    @staticmethod
    def _draw(generator: torch.Generator) -> int:
        return int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())

    def _model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.step: model_output and sample must be tensors")
        if model_output.shape != sample.shape and model_output.dim() >= 2 and sample.dim() >= 2 \
                and model_output.shape[1] == 2 * sample.shape[1] \
                and self.config.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, :sample.shape[1]]
        if model_output.shape != sample.shape:
            raise ValueError(f"{type(self).__name__}.step: model_output has shape {tuple(model_output.shape)} but the "
                             f"sample has {tuple(sample.shape)} (a model that also predicts variances needs "
                             "variance_type='learned' or 'learned_range' in the config)")
        return model_output

    def _corrected_output(self, output: torch.Tensor, state: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model output whose data prediction is the thresholded (``thresholding``) or clipped
        (``clip_sample``) one: with ``x0 = c_skip x~ + c_out F``, ``F' = (fix(x0) - c_skip x~) / c_out``
        (float64), so that every solver sees the corrected data prediction."""
        cfg = self.config
        if not (cfg.thresholding or cfg.clip_sample):
            return output
        _, c_skip, c_out, _ = self._network_adapter.host_plan(sigma)
        x = state.to(torch.float64)
        x0 = c_skip * x + c_out * output.to(torch.float64)
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        else:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return ((x0 - c_skip * x) / c_out).to(output.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Union[None, torch.Generator, List[torch.Generator]] = None,
             return_dict: bool = True):
        """Hand the model output for the pending model call to the solver; return the next model input (or, after
        the last call, the result) as ``prev_sample``, in the scheduler's coordinates."""
        if self.num_inference_steps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps before step")
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError(f"{type(self).__name__}: step called while another step of this scheduler runs (two "
                               "pipelines driving one scheduler at once); give each pipeline its own scheduler "
                               "(copy.deepcopy(scheduler) or Scheduler.from_config(scheduler.config))")
        try:
            return self._step(model_output, timestep, sample, generator, return_dict)
        finally:
            self._stepping.release()

    def _check_driver(self, k: int, timestep, sample: torch.Tensor) -> None:
        """The run in progress belongs to one pipeline: same thread, the pending timestep, the same batch."""
        run = self._run
        if run.owner != threading.get_ident():
            raise RuntimeError(f"{type(self).__name__}: step called from another thread than the one running this "
                               "scheduler's current run (two pipelines driving one scheduler at once); give each "
                               "pipeline its own scheduler")
        expected = self.timesteps[k]
        if isinstance(timestep, (int, float, torch.Tensor)) and not isinstance(timestep, bool) and \
                (not isinstance(timestep, torch.Tensor) or timestep.numel() == 1) and \
                float(timestep) != float(expected):
            raise RuntimeError(f"{type(self).__name__}: step got timestep {float(timestep):g} but the run in "
                               f"progress waits for the output at timesteps[{k}] = {float(expected):g} (two "
                               "pipelines driving one scheduler at once?); give each pipeline its own scheduler, or "
                               "call set_timesteps to start a new run")
        if sample.shape != run.run.shape:
            raise ValueError(f"{type(self).__name__}: the sample changed shape from {tuple(run.run.shape)} to "
                             f"{tuple(sample.shape)} between two step calls (batch size "
                             f"{run.run.shape[0]} -> {sample.shape[0]}); call set_timesteps to start a new run")

    def _tail(self, k: int) -> List[float]:
        """The grid of a run starting at model call ``k``: the solver steps from the one whose first call it is."""
        grid = _sigma_list(self.sigmas)
        if k == 0:
            return grid
        want = self.plan_sigmas[k:]
        for i in range(1, len(grid) - 1):
            tape = executor.recording(self._run_solver, grid[i:])
            calls = [request.sigma for request, _ in tape.entries if type(request) is Denoise]
            if len(calls) <= len(want):
                if calls == want:
                    return grid[i:]
                break
        raise ValueError(f"{type(self).__name__}: a run cannot start at timesteps[{k}]: it is not the first model "
                         f"call of a {self.solver} step (set_begin_index takes t_start * order, order = {self.order})")

    def _start(self, k: int, sample: torch.Tensor, generator):
        self._cancel()
        grid = self._tail(k)
        x_ve = sample / self._coefficient(self.plan_sigmas[k])
        seeds = self._seeds(sample.shape[0], generator, sample.device)
        adapter = self._network_adapter
        plan = executor.lowered(self._run_solver, grid, adapter, False)
        self._run = run = _DrivenRun(None, None, threading.get_ident())
        run.run = executor.Run(adapter, x_ve, {}, seeds, None, self.config.backend, run.record, "end")
        run.steps = executor.drive(plan, run.run, x_ve)
        run.pending = run.steps.send(None)  # the first request: the pipeline has already evaluated `sample`

    def _step(self, model_output, timestep, sample, generator, return_dict):
        first = self._step_index is None
        if self._superseded == threading.get_ident():
            raise RuntimeError(f"{type(self).__name__}: step called by a pipeline whose run another pipeline's "
                               "set_timesteps ended (two pipelines driving one scheduler at once); give each "
                               "pipeline its own scheduler (copy.deepcopy(scheduler) or "
                               "Scheduler.from_config(scheduler.config))")
        k = self._first_index(timestep) if first else self._step_index
        if k >= len(self.timesteps):
            raise RuntimeError(f"{type(self).__name__}: step called {k + 1} times but the schedule has "
                               f"{len(self.timesteps)} model calls; call set_timesteps to start a new run")
        if not first and k < len(self.timesteps) - self._noop:
            self._check_driver(k, timestep, sample)
        if k >= len(self.timesteps) - self._noop:     # the zero-length last step: the sample stays as it is
            self._step_index = k + 1
            return FastintSchedulerOutput(prev_sample=sample) if return_dict else (sample,)
        try:
            output = self._model_output(model_output, sample)
            if first:
                self._start(k, sample, generator)
            elif sample is not self._returned:  # the pipeline changed the state: the solver continues from it
                self._run.pending[2].copy_(sample / self._coefficient(self.plan_sigmas[k]))
            run = self._run
            output = self._corrected_output(output, run.pending[2], self.plan_sigmas[k])
            try:
                run.pending = run.steps.send(output)
                result = None
            except StopIteration as stop:
                run.pending, result = None, stop.value
        except BaseException:
            self._cancel()
            raise
        self._step_index = k + 1
        last = self._step_index == len(self.timesteps) - self._noop
        if (result is None) == last:
            self._cancel()
            raise RuntimeError(f"{type(self).__name__}: the solver's model calls do not match the planned "
                               f"timesteps (after {k + 1} of {len(self.timesteps)} calls)")
        if result is not None:
            final_sigma = float(self.sigmas[-1])
            if not executor.all_finite(result):
                self._cancel()
                raise FloatingPointError("sampling produced NaN or Inf: a model output contained non-finite values")
            prev = result if final_sigma == 0 else result * self._coefficient(final_sigma)
            self._run = None
        else:
            prev = run.pending[2] if self._coordinates == "ve" else run.pending[0]
        self._returned = prev
        denoised = run.denoised
        if not return_dict:
            return (prev,)
        return FastintSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)

    def _cancel(self):
        if self._run is not None:
            self._run.close()
            self._run = None

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noisy sample in the scheduler's coordinates. After ``set_timesteps``, at the noise level of the
        model call diffusers' schedulers pick: ``timesteps[step_index]`` mid-run (inpainting), ``begin_index``
        before a part-way run (img2img), else the call of each timestep; VE coordinates: ``x0 + sigma noise``,
        model coordinates: ``alpha x0 + alpha sigma noise`` (alpha = 1 / sqrt(1 + sigma^2); float32 as diffusers).
        Timesteps outside the schedule (training): VP ``sqrt(ab) x0 + sqrt(1 - ab) noise`` at those training
        timesteps (VE: divided by sqrt(ab)); flow: (1 - t) x0 + t noise with t = timestep / num_train_timesteps."""
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        if self.config.prediction_type == "flow":
            u = (t.to(torch.float64) / self.config.num_train_timesteps).view(view)
            return ((1 - u) * original_samples + u * noise).to(original_samples.dtype)
        index = None
        if self.num_inference_steps is not None:
            if self._begin_index is not None:
                index = [self._step_index if self._step_index is not None else self._begin_index] * t.shape[0]
            elif bool(torch.isin(t.to(self.timesteps.device), self.timesteps).all()):
                index = [self._index_for_timestep(v) for v in t]
        if index is None:
            ab = self.alphas_cumprod.to(original_samples.device)[t.long()].view(view)
            if self._coordinates == "ve":
                return (original_samples + ((1 - ab) / ab).sqrt() * noise).to(original_samples.dtype)
            return (ab.sqrt() * original_samples + (1 - ab).sqrt() * noise).to(original_samples.dtype)
        sigma = self._call_sigmas[index].to(device=original_samples.device, dtype=original_samples.dtype).view(view)
        if self._coordinates == "ve":
            return original_samples + noise * sigma
        alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha * original_samples + (sigma * alpha) * noise


class FastintSEEDSScheduler(FastintScheduler):
    """``FastintScheduler`` with ``solver="seeds_2"`` by default (``seeds_1`` / ``seeds_3`` via ``solver=``)."""

    default_solver = "seeds_2"


class FastintRestartScheduler(FastintScheduler):
    """``FastintScheduler`` with ``solver="restart"`` (available when the Restart solver is registered)."""

    default_solver = "restart"


class FastintDPMSolverScheduler(FastintScheduler):
    """``FastintScheduler`` with ``solver="dpmpp_2m"`` (``dpmpp_3m``, ``dpmpp_2m_sde``, ... via ``solver=``)."""

    default_solver = "dpmpp_2m"


class FastintHeunScheduler(FastintScheduler):
    """``FastintScheduler`` with ``solver="heun"`` (EDM Heun)."""

    default_solver = "heun"
