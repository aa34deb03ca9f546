"""diffusers schedulers that run fastint's solvers: ``pipe.scheduler = FastintScheduler.from_config(pipe.scheduler.config,
solver="seeds_2")``.

How it works
------------
diffusers pipelines run ``for t in scheduler.timesteps: out = model(sample, t); sample = scheduler.step(out, t,
sample).prev_sample``: one model call per ``step``. A fastint solver is a host program run by ``fastint.executor``,
which yields each network evaluation it needs (the model input, in the model's coordinates) and receives the
network output. ``FastintScheduler`` drives that generator from ``step`` in the pipeline's own thread: each
``step`` sends the output for the pending evaluation and returns the next model input as ``prev_sample`` (or the
final result). No helper thread: whatever the caller's thread set (``fastint.use_backend``, ``torch.autocast``,
grad mode, the CUDA stream) applies, and the result is ``fastint.sample(adapter(model), x, sigmas, solver,
seed=...)`` (same executor, same op calls; the first model output is the pipeline's, made at its own sample rather
than at ``c_in x~_0``, which differs from it by rounding). An abandoned run leaves nothing behind: the next ``set_timesteps``
starts a fresh one. A run is bound to the pipeline driving it: a ``step`` from another thread during a run, or with
a timestep that is not the pending one (two pipelines interleaving their steps), raises a clear error.

- ``timesteps`` holds one entry per model call (like diffusers' ``HeunDiscreteScheduler``); they come from the
  recorded program (the noise levels a solver asks for never depend on tensor values) through the same adapter, so
  they equal the timesteps the adapter would pass to the model.
- The pipeline's sample is kept in the MODEL's coordinates (``x_vp = alpha x~`` for VP models, ``x_flow = (1 - t) x~``
  for rectified flow), like ``DDIMScheduler`` / ``FlowMatchEulerDiscreteScheduler``: ``init_noise_sigma = 1`` and
  ``scale_model_input`` is the identity, so pipelines that call it (Stable Diffusion) and pipelines that do not
  (``DDPMPipeline``) both work. The initial pure-noise sample is read as the model-coordinate state at the first
  noise level: ``x~_0 = sample / alpha_0``.
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

import math
import threading
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

__all__ = ["FastintScheduler", "FastintSEEDSScheduler", "FastintRestartScheduler", "FastintDPMSolverScheduler",
           "FastintHeunScheduler", "FastintSchedulerOutput"]

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")
PREDICTION_TYPES = VP_PREDICTIONS + ("flow",)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SIGMA_SCHEDULES = ("discrete", "karras", "exponential")


@dataclass
class FastintSchedulerOutput(BaseOutput):
    """``prev_sample``: the next model input (or the final result), in the model's coordinates;
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
    linspace, trailing) and ``steps_offset`` for the discrete schedule, ``use_karras_sigmas`` /
    ``use_exponential_sigmas`` (or ``sigma_schedule`` = discrete, karras, exponential; ``rho``), ``variance_type``
    (learned / learned_range: the model's extra variance channels are dropped), flow models: ``shift``,
    ``use_dynamic_shifting`` (then the pipeline passes ``mu`` to ``set_timesteps``). fastint's own: ``solver``,
    ``solver_options`` (dict), ``backend``, ``quantize_timesteps`` (integer timesteps for discrete models).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1
    default_solver = "dpmpp_2m"

    @register_to_config
    def __init__(self, solver: Optional[str] = None, solver_options: Optional[dict] = None,
                 num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
                 prediction_type: Optional[str] = None, timestep_spacing: str = "leading", steps_offset: int = 0,
                 variance_type: Optional[str] = None, sigma_schedule: Optional[str] = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, rho: float = 7.0,
                 shift: Optional[float] = None, use_dynamic_shifting: bool = False,
                 rescale_betas_zero_snr: bool = False, quantize_timesteps: bool = True, backend: str = "auto"):
        solver = solver if solver is not None else type(self).default_solver
        options = dict(solver_options or {})
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"{type(self).__name__}: unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
        self._solver = get_solver(solver, **options)  # validates the options now, naming the valid ones
        if prediction_type is None:
            prediction_type = "flow" if shift is not None or use_dynamic_shifting else "epsilon"
        aliases = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "flow_prediction": "flow"}
        prediction_type = aliases.get(prediction_type, prediction_type)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{type(self).__name__}: unknown prediction_type {prediction_type!r}; valid ones are "
                             f"{', '.join(map(repr, PREDICTION_TYPES))}")
        if sigma_schedule is None:
            sigma_schedule = "karras" if use_karras_sigmas else "exponential" if use_exponential_sigmas else "discrete"
        if sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"{type(self).__name__}: unknown sigma_schedule {sigma_schedule!r}; valid ones are "
                             f"{', '.join(map(repr, SIGMA_SCHEDULES))}")
        self.register_to_config(solver=solver, solver_options=options, prediction_type=prediction_type,
                                sigma_schedule=sigma_schedule)
        if prediction_type == "flow":
            self.shift = 1.0 if shift is None else float(shift)
            if not self.shift > 0:
                raise ValueError(f"{type(self).__name__}: shift must be > 0, got {shift!r}")
            self.alphas_cumprod = None
        else:
            if rescale_betas_zero_snr:
                raise ValueError(f"{type(self).__name__}: rescale_betas_zero_snr=True gives alphas_cumprod[-1] = 0, an "
                                 "infinite VE noise level that fastint's VE-coordinate solvers cannot start from; "
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
                raise ValueError(f"{type(self).__name__}: beta_schedule {beta_schedule!r} is not supported (the "
                                 f"config needs one of {', '.join(map(repr, BETA_SCHEDULES))} or trained_betas)")
            self.alphas_cumprod = alphas_cumprod_from_betas(betas).to(torch.float64)
        self.init_noise_sigma = 1.0  # the pipeline's sample lives in the model's coordinates
        self.timesteps: Optional[torch.Tensor] = None
        self.sigmas: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self._seed = None
        self._run: Optional[_DrivenRun] = None
        self._step_index: Optional[int] = None
        self._returned = None
        self._stepping = threading.Lock()
        self._network_adapter = self._adapter(_no_network)

    def __getstate__(self):
        """Copies and pickles carry the configuration and schedule, never a run in progress."""
        state = dict(self.__dict__)
        state.update(_run=None, _step_index=None, _returned=None, _stepping=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stepping = threading.Lock()

    # -- configuration -----------------------------------------------------------------------------------------
    @property
    def solver(self) -> str:
        return self.config.solver

    @property
    def step_index(self) -> Optional[int]:
        """The number of ``step`` calls of the current run (None before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return 0

    def set_begin_index(self, begin_index: int = 0):
        if begin_index != 0:
            raise NotImplementedError(f"{type(self).__name__}: starting part-way (begin_index={begin_index}, "
                                      "img2img strength) is not supported; run the full schedule")

    def __len__(self):
        return self.config.num_train_timesteps

    def set_seed(self, seed) -> None:
        """Seeds of the per-sample noise for the following runs: an int (sample b uses seed + b), a list / 1-D
        tensor of per-sample seeds, or None (use the ``generator`` passed to ``step`` or torch's default one)."""
        self._seed = seed

    def _adapter(self, inner):
        if self.config.prediction_type == "flow":
            return FlowDenoiser(inner, timestep_scale=float(self.config.num_train_timesteps), prediction_type="flow")
        return DiscreteVPDenoiser(inner, self.alphas_cumprod, prediction_type=self.config.prediction_type,
                                  quantize=self.config.quantize_timesteps)

    def _sigma_grid(self, n: int, sigmas, mu) -> torch.Tensor:
        cfg = self.config
        if cfg.prediction_type == "flow":
            T = cfg.num_train_timesteps
            if cfg.use_dynamic_shifting and mu is None:
                raise ValueError(f"{type(self).__name__}: use_dynamic_shifting=True needs the pipeline to pass mu "
                                 "to set_timesteps")
            shift = math.exp(mu) if cfg.use_dynamic_shifting else self.shift
            if sigmas is None:
                return flow(n, shift, num_train_timesteps=T, dynamic_shifting=bool(cfg.use_dynamic_shifting))
            u = np.asarray(sigmas, dtype=np.float64)  # diffusers' custom flow sigmas: unshifted times in (0, 1]
            t = shift * u / (1 + (shift - 1) * u)
            t_max = shift * (1 - 1 / T) / (1 + (shift - 1) * (1 - 1 / T))
            t = np.minimum(t, t_max)
            grid = torch.from_numpy(t / (1 - t))
        elif sigmas is not None:
            grid = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))  # VE sigmas, as EulerDiscreteScheduler's
        else:
            model_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
            lo, hi = float(model_sigmas[0]), float(model_sigmas[-1])
            if cfg.sigma_schedule == "karras":
                return karras(n, lo, hi, cfg.rho)
            if cfg.sigma_schedule == "exponential":
                return exponential(n, lo, hi)
            return vp_discrete(self.alphas_cumprod, n, spacing=cfg.timestep_spacing, steps_offset=cfg.steps_offset,
                               convention="ddim").sigmas
        if grid.numel() and float(grid[-1]) != 0.0:
            grid = torch.cat([grid, grid.new_zeros(1)])
        return grid

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device] = None,
                      sigmas: Optional[Sequence[float]] = None, mu: Optional[float] = None, *, seed=None):
        """Build the noise levels and ``timesteps`` (one per model call) of ``num_inference_steps`` solver steps.

        ``sigmas``: custom levels instead (VE sigmas for VP models, unshifted flow times for flow models, diffusers'
        conventions); ``mu``: the dynamic-shift parameter flow pipelines pass; ``seed``: as ``set_seed``.
        """
        self._cancel()
        if seed is not None:
            self._seed = seed
        if sigmas is not None:
            num_inference_steps = len(sigmas)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise ValueError(f"{type(self).__name__}: num_inference_steps must be an int >= 1, got "
                             f"{num_inference_steps!r}")
        grid = self._sigma_grid(int(num_inference_steps), sigmas, mu)
        # the recorded program: the noise level of every model call, and the timestep the adapter derives from it
        tape = executor.recording(self._solver, _sigma_list(grid))
        plan_sigmas = [request.sigma for request, _ in tape.entries if type(request) is Denoise]
        adapter = self._network_adapter
        probe = torch.zeros(1, 1, dtype=torch.float32)
        batches = adapter.timestep_batches(probe, [adapter.host_plan(s)[3] for s in plan_sigmas])
        self.sigmas = grid
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = torch.cat([b.reshape(-1)[:1] for b in batches]).to(device)
        self.plan_sigmas = plan_sigmas  # the VE noise level of every model call (host floats)
        self._step_index = None
        self._returned = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity: the pipeline's sample is already the model input (model coordinates)."""
        return sample

    # -- the run -----------------------------------------------------------------------------------------------
    def _coefficient(self, sigma: float) -> float:
        """alpha (model coordinates = alpha * VE) at the host float ``sigma``, as the adapter's host path has it."""
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

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Union[None, torch.Generator, List[torch.Generator]] = None,
             return_dict: bool = True):
        """Hand the model output for the pending model call to the solver; return the next model input (or, after
        the last call, the result) as ``prev_sample``, in the model's coordinates."""
        if self.timesteps is None:
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

    def _step(self, model_output, timestep, sample, generator, return_dict):
        k = 0 if self._step_index is None else self._step_index
        if k >= len(self.timesteps):
            raise RuntimeError(f"{type(self).__name__}: step called {k + 1} times but the schedule has "
                               f"{len(self.timesteps)} model calls; call set_timesteps to start a new run")
        if k > 0:
            self._check_driver(k, timestep, sample)
        try:
            output = self._model_output(model_output, sample)
            if k == 0:
                self._cancel()
                x_ve = sample / self._coefficient(self.plan_sigmas[0])
                seeds = self._seeds(sample.shape[0], generator, sample.device)
                cfg = self.config
                adapter = self._network_adapter
                plan = executor.lowered(self._solver, _sigma_list(self.sigmas), adapter, False)
                self._run = run = _DrivenRun(None, None, threading.get_ident())
                run.run = executor.Run(adapter, x_ve, {}, seeds, None, cfg.backend, run.record, "end")
                run.steps = executor.drive(plan, run.run, x_ve)
                run.pending = run.steps.send(None)  # the first request: the pipeline has already evaluated `sample`
            elif sample is not self._returned:  # the pipeline changed the state: the solver continues from it
                self._run.pending[2].copy_(sample / self._coefficient(self.plan_sigmas[k]))
            run = self._run
            try:
                run.pending = run.steps.send(output)
                result = None
            except StopIteration as stop:
                run.pending, result = None, stop.value
        except BaseException:
            self._cancel()
            raise
        self._step_index = k + 1
        last = self._step_index == len(self.timesteps)
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
            prev = run.pending[0]
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
        """The model-coordinate noisy sample at training ``timesteps`` (VP: sqrt(ab) x0 + sqrt(1 - ab) noise; flow:
        (1 - t) x0 + t noise with t = timestep / num_train_timesteps)."""
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        if self.config.prediction_type == "flow":
            u = (t.to(torch.float64) / self.config.num_train_timesteps).view(view)
            return ((1 - u) * original_samples + u * noise).to(original_samples.dtype)
        ab = self.alphas_cumprod.to(original_samples.device)[t.long()].view(view)
        return (ab.sqrt() * original_samples + (1 - ab).sqrt() * noise).to(original_samples.dtype)


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
