"""Benchmarks of fastint against its floor and its peers, measured side by side in one run.

Three parts, each usable on its own and together as ``python -m fastint bench`` (a quick version of everything):

* ``microbench``: the fused op per backend and per solver step kind (Euler, DPM-Solver++(2M), DPM-Solver++(2M) SDE)
  over sizes and dtypes, against the floor (a copy moving the same bytes, measured in the same run), the same step
  written as plain PyTorch ops, diffusers' scheduler ``step`` for the same method and k-diffusion's per-step math.
  On CUDA the timer synchronises (CUDA events around a batch of calls) and a CUDA-graph replay variant is added for
  small tensors, where launch overhead dominates.
* ``end_to_end``: a small convolutional denoiser (diffusers' ``UNet2DModel`` from a config, no downloads; random
  weights, or trained briefly on scikit-learn's digits) sampled with fastint and with the peers at equal NFE:
  total time, time in the model (the UNet calls, timed by a wrapper) and the sampler overhead = total - model.
* ``cuda_graph_bench`` (GPU only): eager ``fastint.sample`` against the replay of the whole loop captured with
  ``fastint.cuda_graph.capture_sampler``, with the largest difference of their outputs.

``markdown_tables`` / ``write_plot`` turn the rows into tables (achieved bandwidth, fraction of the floor,
speed-up per peer) and a PNG. Nothing here asserts on timings: ratios are reported, never tested.
"""

import argparse
import datetime
import hashlib
import importlib
import importlib.machinery
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Callable, Dict, List, Optional, Sequence

import torch

STEP_KINDS = ("euler", "dpmpp_2m", "dpmpp_2m_sde")
STEP_INPUTS = {"euler": 2, "dpmpp_2m": 3, "dpmpp_2m_sde": 3}
CPU_SIZES = (2 ** 16, 2 ** 18, 2 ** 20, 2 ** 22, 2 ** 24)   # 64K .. 16M elements
LARGE_SIZE = 2 ** 26                                        # 64M: opt-in on the CPU (slow on 2 cores)
QUICK_SIZES = (2 ** 16, 2 ** 20, 2 ** 22)
GRAPH_MAX_ELEMENTS = 2 ** 22                                # CUDA-graph replay variant up to 4M elements
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
E2E_SOLVERS = ("dpmpp_2m", "dpmpp_2m_sde", "euler")


# ------------------------------------------------------------------------------------------------ environment
def machine_description(device: str = "cpu") -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_backends(device: str) -> List[str]:
    from fastint.ops import list_backends
    usable = [b["name"] for b in list_backends() if b["available"] and device in b["devices"]]
    order = ("cuda", "triton", "cpp", "compile", "eager")
    return [name for name in order if name in usable]


# ------------------------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Times ``fn`` per call: a batch of ``inner`` calls between two synchronisations (CUDA events on GPU,
    ``perf_counter`` on CPU), ``inner`` calibrated so one batch lasts about ``target_s``."""

    def __init__(self, fn: Callable[[], object], device: str, target_s: float = 2e-3, warmup: int = 2):
        self.fn, self.device = fn, device
        for _ in range(warmup):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - t0, 1e-7)
        self.inner = max(1, min(1000, int(target_s / once)))

    def sample(self) -> float:
        fn, inner = self.fn, self.inner
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def measure_side_by_side(candidates: Dict[str, Callable[[], object]], device: str, rounds: int = 7,
                         budget_s: float = 1.5) -> Dict[str, float]:
    """Median seconds per call of every candidate; rounds interleave the candidates (a busy machine hits all of
    them alike). Stops early once ``budget_s`` is spent (at least 3 rounds). Failing candidates are left out."""
    timers, times = {}, {}
    for name, fn in candidates.items():
        try:
            timers[name] = Timer(fn, device)
            times[name] = []
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run this case is reported, not fatal
            print(f"  (skipped {name}: {type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr)
    t_start = time.perf_counter()
    for r in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.sample())
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {name: statistics.median(v) for name, v in times.items()}


def graph_replay(fn: Callable[[], object], calls: int = 20) -> Callable[[], None]:
    """A CUDA graph holding ``calls`` calls of ``fn`` (warmed up on a side stream); the returned callable replays
    it. Time it and divide by ``calls`` (``GraphCandidate`` does)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


# ------------------------------------------------------------------------------------------------ step cases
def _step_sigmas():
    """A mid-loop DPM-Solver++ step: previous, current and next VE sigma (values from a Karras grid)."""
    return 2.5, 2.0, 1.6


def _dpmpp_coefficients(kind: str, eta: float = 1.0):
    """fastint's host coefficients of the step kinds (inputs x, D[, D_old]) and the noise coefficient: the second
    combination of the solver's recorded program on ``_step_sigmas()`` as the executor lowers it for a plain model."""
    from fastint.executor import COMBINE, lowered
    from fastint.solvers import get_solver
    solver = get_solver(kind, **({"eta": eta} if kind == "dpmpp_2m_sde" else {}))
    plan = lowered(solver, list(_step_sigmas()) + [0.0], None, False)
    step = [i for i in plan.instructions if i[0] == COMBINE][1]
    coeffs, (inputs, _, num_noise) = step[4], step[8]
    return list(coeffs[:inputs]), (coeffs[inputs] if num_noise else None)


def _diffusers_step(kind: str, x, d, d_old):
    """diffusers' scheduler ``step`` for the same method, at a mid-loop step (x0-prediction for DPM-Solver++,
    eps-prediction for Euler: the scheduler's own conversions are part of its cost)."""
    import diffusers
    if kind == "euler":
        sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, prediction_type="epsilon")
        sched.set_timesteps(20, device=x.device)
        timestep = sched.timesteps[5]

        sched.is_scale_input_called = True   # the step is timed alone (no "call scale_model_input" warning)

        def step():
            sched._step_index = 5
            return sched.step(d, timestep, x).prev_sample
        return step
    algorithm = "dpmsolver++" if kind == "dpmpp_2m" else "sde-dpmsolver++"
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type=algorithm,
                                                  solver_order=2, prediction_type="sample")
    sched.set_timesteps(20, device=x.device)
    timestep = sched.timesteps[5]

    def step():
        sched._step_index = 5
        sched.model_outputs = [d_old, d]
        sched.lower_order_nums = 2
        return sched.step(d, timestep, x).prev_sample
    return step


def _kdiffusion_step(kind: str, x, d, d_old):
    """k-diffusion's per-step math, line for line (sigmas as 0-d float32 tensors on the device, as there); the SDE
    noise is ``torch.randn_like`` (its default BrownianTreeNoiseSampler is far slower; see ``end_to_end``)."""
    sigma_prev, sigma, sigma_next = (torch.tensor(v, dtype=torch.float32, device=x.device) for v in _step_sigmas())
    if kind == "euler":
        def step():
            dd = (x - d) / sigma                      # to_d
            dt = sigma_next - sigma
            return x + dd * dt
        return step
    if kind == "dpmpp_2m":
        def sigma_fn(t):
            return t.neg().exp()

        def t_fn(s):
            return s.log().neg()

        def step():
            t, t_next = t_fn(sigma), t_fn(sigma_next)
            h = t_next - t
            h_last = t - t_fn(sigma_prev)
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_old
            return (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        return step
    h_last = torch.log(sigma_prev / sigma)

    def step():
        t, s = -sigma.log(), -sigma_next.log()
        h = s - t
        eta_h = 1.0 * h
        y = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * d
        r = h_last / h
        y = y + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (d - d_old)
        return y + torch.randn_like(x) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * 1.0
    return step


def _torch_ops_step(kind: str, x, d, d_old):
    """The same step as plain PyTorch ops with host float coefficients (what a hand-written loop does)."""
    coeffs, c_noise = _dpmpp_coefficients(kind)
    if kind == "euler":
        a, b = coeffs
        return lambda: a * x + b * d
    a, b, c = coeffs
    if c_noise is None:
        return lambda: a * x + b * d + c * d_old
    return lambda: a * x + b * d + c * d_old + c_noise * torch.randn_like(x)


def microbench(sizes: Sequence[int] = QUICK_SIZES, dtypes: Sequence[str] = ("fp32", "bf16"),
               kinds: Sequence[str] = STEP_KINDS, backends: Optional[Sequence[str]] = None,
               peers: Sequence[str] = ("torch", "diffusers", "k-diffusion"), device: Optional[str] = None,
               rounds: int = 7, budget_s: float = 1.5, cuda_graph: bool = True, verbose: bool = True) -> List[dict]:
    """Rows ``{kind, elements, dtype, candidate, group, seconds, bytes, device}``; ``group`` is ``floor``,
    ``fastint`` or ``peer``. ``bytes`` are the bytes one step moves (each input read once, the output written
    once): the floor is a copy of exactly that many bytes, measured in the same round-robin."""
    from fastint.ops import fused_step
    device = device or default_device()
    backends = list(backends) if backends is not None else [b for b in available_backends(device)
                                                              if b != "compile"]
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for n in sizes:
            gen = torch.Generator().manual_seed(n)
            x0, d, d_old = (torch.randn(1, n, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
            seeds = torch.tensor([1234], device=device)
            for kind in kinds:
                n_in = STEP_INPUTS[kind]
                nbytes = (n_in + 1) * n * x0.element_size()
                src = torch.randn(nbytes // (2 * x0.element_size()), generator=gen).to(device=device, dtype=dtype)
                dst = torch.empty_like(src)
                x = x0.clone()
                coeffs, c_noise = _dpmpp_coefficients(kind)
                ins = [x, d, d_old][:n_in]
                cands: Dict[str, tuple] = {"floor: copy of the same bytes": ("floor", lambda: dst.copy_(src))}
                for backend in backends:
                    if c_noise is None:
                        fn = (lambda b=backend: fused_step(ins, [coeffs], out=x, backend=b))
                    else:
                        fn = (lambda b=backend: fused_step(ins, [coeffs + [c_noise]], num_noise=1, seeds=seeds,
                                                           counter=7, out=x, backend=b))
                    cands[f"fastint {backend}"] = ("fastint", fn)
                builders = {"torch": ("torch ops", _torch_ops_step), "diffusers": ("diffusers step", _diffusers_step),
                            "k-diffusion": ("k-diffusion step math", _kdiffusion_step)}
                for peer in peers:
                    label, build = builders[peer]
                    try:
                        cands[label] = ("peer", build(kind, x, d, d_old))
                    except Exception as exc:  # noqa: BLE001 - diffusers missing, ...
                        if verbose:
                            print(f"  (no {label}: {exc!r})", file=sys.stderr)
                if device == "cuda" and cuda_graph and n <= GRAPH_MAX_ELEMENTS:
                    for name in list(cands):
                        group, fn = cands[name]
                        if name.startswith("fastint") and not any(b in name for b in ("cuda", "triton")):
                            continue
                        try:
                            replay = graph_replay(fn, calls=20)
                        except Exception as exc:  # noqa: BLE001
                            if verbose:
                                print(f"  (no graph for {name}: {exc!r})", file=sys.stderr)
                            continue
                        cands[f"{name} [graph]"] = (group, (lambda r=replay: r()), 20)
                fns = {name: c[1] for name, c in cands.items()}
                med = measure_side_by_side(fns, device, rounds=rounds, budget_s=budget_s)
                for name, seconds in med.items():
                    per_call = cands[name][2] if len(cands[name]) > 2 else 1
                    rows.append({"kind": kind, "elements": n, "dtype": dtype_name, "candidate": name,
                                 "group": cands[name][0], "seconds": seconds / per_call, "bytes": nbytes,
                                 "device": device})
                if verbose:
                    floor = med.get("floor: copy of the same bytes")
                    best = min((v for k, v in med.items() if k.startswith("fastint") and "graph" not in k),
                               default=float("nan"))
                    print(f"  {kind:13s} {n:>9d} {dtype_name}: floor {floor * 1e3:.3f} ms, best fastint "
                          f"{best * 1e3:.3f} ms", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------------ tables
def _fmt_elements(n: int) -> str:
    for unit, scale in (("M", 2 ** 20), ("K", 2 ** 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _group_rows(rows):
    cases: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        cases.setdefault((r["kind"], r["dtype"], r["elements"]), {})[r["candidate"]] = r
    return cases


def micro_markdown(rows: List[dict]) -> str:
    """Two tables: a summary per (step, dtype, size) and every candidate with bandwidth and fraction of floor."""
    cases = _group_rows(rows)
    out = ["Summary: the best fastint backend (eager-dispatch timing) as a fraction of the floor's bandwidth, "
           "and how many times faster it is than each peer doing the same step.", "",
           "| step | dtype | elements | floor GB/s | best fastint | GB/s | % of floor | vs torch ops | "
           "vs diffusers step | vs k-diffusion math |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (kind, dtype, n), cands in cases.items():
        floor = cands.get("floor: copy of the same bytes")
        fast = {k: v for k, v in cands.items() if v["group"] == "fastint" and "[graph]" not in k}
        if not floor or not fast:
            continue
        best_name, best = min(fast.items(), key=lambda kv: kv[1]["seconds"])
        gbs = best["bytes"] / best["seconds"] / 1e9

        def vs(label):
            peer = cands.get(label)
            return f"{peer['seconds'] / best['seconds']:.1f}x" if peer else "-"
        out.append(f"| {kind} | {dtype} | {_fmt_elements(n)} | {floor['bytes'] / floor['seconds'] / 1e9:.1f} | "
                   f"{best_name.replace('fastint ', '')} | {gbs:.1f} | {100 * floor['seconds'] / best['seconds']:.0f}% "
                   f"| {vs('torch ops')} | {vs('diffusers step')} | {vs('k-diffusion step math')} |")
    out += ["", "All candidates (GB/s = the step's bytes / time; % of floor = floor time / time):", "",
            "| step | dtype | elements | candidate | ms | GB/s | % of floor |", "|---|---|---:|---|---:|---:|---:|"]
    for (kind, dtype, n), cands in cases.items():
        floor = cands.get("floor: copy of the same bytes")
        for name, r in cands.items():
            ref = cands.get("floor: copy of the same bytes [graph]") if "[graph]" in name else floor
            frac = f"{100 * ref['seconds'] / r['seconds']:.0f}%" if ref else "-"
            out.append(f"| {kind} | {dtype} | {_fmt_elements(n)} | {name} | {r['seconds'] * 1e3:.3f} | "
                       f"{r['bytes'] / r['seconds'] / 1e9:.1f} | {frac} |")
    return "\n".join(out)


def write_plot(rows: List[dict], path: str) -> Optional[str]:
    """Achieved bandwidth vs elements, one panel per step kind, fp32 solid and other dtypes dashed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    kinds = [k for k in STEP_KINDS if any(r["kind"] == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        series: Dict[tuple, list] = {}
        for r in rows:
            if r["kind"] == kind:
                series.setdefault((r["candidate"], r["dtype"]), []).append((r["elements"], r["bytes"] / r["seconds"] / 1e9))
        for (cand, dtype), pts in sorted(series.items()):
            pts.sort()
            style = "-" if dtype == "fp32" else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=f"{cand} ({dtype})",
                    lw=2.5 if cand.startswith("floor") else 1.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (step bytes / time)")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"fastint fused step vs floor and peers ({rows[0]['device']})" if rows else "")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ end to end
K_DIFFUSION_VERSION = "0.1.1.post1"   # the peer version the parity tests and this benchmark are written against


def load_k_diffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` without the package ``__init__`` (which imports the training stack), stubbing
    torchvision/torchdiffeq only while importing and only if absent (tests/peers.py loads it this way too)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"k-diffusion is not installed (pip install --no-deps k-diffusion=={K_DIFFUSION_VERSION})")
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        package.__spec__ = importlib.machinery.ModuleSpec("k_diffusion", None, is_package=True)
        package.__spec__.submodule_search_locations = package.__path__
        sys.modules["k_diffusion"] = package

    def unavailable(*_, **__):
        raise RuntimeError("stub: the real module is not installed")

    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        functional = types.ModuleType("torchvision.transforms.functional")
        functional.to_tensor = functional.to_pil_image = unavailable
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        tv = types.ModuleType("torchvision")
        tv.transforms = transforms
        stubs.update({"torchvision": tv, "torchvision.transforms": transforms,
                      "torchvision.transforms.functional": functional})
    if importlib.util.find_spec("torchdiffeq") is None:
        td = types.ModuleType("torchdiffeq")
        td.odeint = unavailable
        stubs["torchdiffeq"] = td
    for name, module in stubs.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    added = [name for name in stubs if name not in sys.modules]
    sys.modules.update({name: stubs[name] for name in added})
    try:
        importlib.import_module("k_diffusion.utils")
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name in added:
            if sys.modules.get(name) is stubs[name]:
                del sys.modules[name]


def tiny_unet_config(sample_size: int = 8) -> dict:
    return dict(sample_size=sample_size, in_channels=1, out_channels=1, layers_per_block=1,
                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def digits_data(sample_size: int = 8) -> torch.Tensor:
    """scikit-learn's 8x8 digits (1797 images, shipped with the package) in [-1, 1], shape (N, 1, s, s)."""
    from sklearn.datasets import load_digits
    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if sample_size != 8:
        images = torch.nn.functional.interpolate(images, size=(sample_size, sample_size), mode="bilinear",
                                                 align_corners=False)
    return images


def train_betas() -> torch.Tensor:
    """DDPM's linear betas (1e-4 .. 0.02, 1000 steps): the schedule the benchmark UNet is trained on."""
    return torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def build_unet(sample_size: int = 8, train_seconds: float = 0.0, cache_dir: Optional[str] = None,
               seed: int = 0, verbose: bool = True):
    """``UNet2DModel`` from ``tiny_unet_config`` (eval mode, CPU). ``train_seconds > 0``: eps-prediction training on
    the digits for that long (Adam, batch 128), cached in ``cache_dir`` (default: a temp dir) by config and
    duration so later runs of the same day reuse the weights; otherwise random weights (timing only)."""
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    unet = UNet2DModel(**tiny_unet_config(sample_size))
    if train_seconds <= 0:
        return unet.eval()
    key = hashlib.sha1(repr((tiny_unet_config(sample_size), train_seconds, seed)).encode()).hexdigest()[:12]
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "fastint_bench")
    path = os.path.join(cache_dir, f"unet_digits_{key}.pt")
    if os.path.exists(path):
        unet.load_state_dict(torch.load(path, map_location="cpu"))
        if verbose:
            print(f"  (trained UNet loaded from {path})", file=sys.stderr)
        return unet.eval()
    data = digits_data(sample_size)
    ab = torch.cumprod(1 - train_betas(), 0).float()
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    t0, it, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < train_seconds:
        idx = torch.randint(0, data.shape[0], (128,), generator=gen)
        x0 = data[idx]
        t = torch.randint(0, 1000, (128,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        it += 1
    if verbose:
        print(f"  (trained the UNet on digits: {it} iterations in {train_seconds:.0f} s, final loss "
              f"{statistics.mean(losses[-20:]):.4f}; cached in {path})", file=sys.stderr)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(unet.state_dict(), path)
    return unet.eval()


class TimedModel:
    """Wraps the network and accumulates the time spent in its calls (perf_counter on CPU; CUDA event pairs on GPU,
    summed after the loop, so the wrapper itself adds no synchronisation inside the loop)."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.reset()

    def reset(self):
        self.seconds, self.calls, self._events = 0.0, 0, []

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model(*args, **kwargs)
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out

    def model_seconds(self) -> float:
        if self._events:
            torch.cuda.synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self._events) * 1e-3
            self._events = []
        return self.seconds


def _loops(timed: TimedModel, x_vp: torch.Tensor, steps: int, backend: str, kd) -> Dict[str, Dict[str, Callable]]:
    """``{method: {sampler label: run() -> samples}}``, every run starting from the same VP noise ``x_vp`` at equal
    NFE (= ``steps``). fastint and k-diffusion drive the network through ``fastint.models.DiscreteVPDenoiser``
    (VE coordinates, x = x_vp / alpha at the first sigma); diffusers' loops are its documented pattern
    (``scale_model_input``, network, ``step``)."""
    import diffusers
    import fastint
    from fastint.models import DiscreteVPDenoiser
    from fastint.schedules import alphas_cumprod_from_betas, vp_discrete

    betas = train_betas()
    ab = alphas_cumprod_from_betas(betas)
    denoiser = DiscreteVPDenoiser(timed, ab, prediction_type="epsilon")
    device = x_vp.device

    def fastint_run(solver, **opts):
        def run():
            sched = vp_discrete(ab, steps, spacing="linspace")
            sigmas = sched.sigmas
            x = x_vp * math.sqrt(1 + sigmas[0].item() ** 2)   # VP noise -> VE state at sigma_max
            return fastint.sample(denoiser, x, sigmas, solver, seed=0, backend=backend, **opts)
        return run

    def diffusers_run(make):
        def run():
            sched = make()
            sched.set_timesteps(steps, device=device)
            x = x_vp * sched.init_noise_sigma
            gen = torch.Generator(device=device).manual_seed(0)
            for t in sched.timesteps:
                eps = timed(sched.scale_model_input(x, t), t).sample
                x = sched.step(eps, t, x, generator=gen).prev_sample
            return x
        return run

    def kd_run(name, **opts):
        def run():
            sigmas = vp_discrete(ab, steps, spacing="linspace").sigmas.to(device=device, dtype=torch.float32)
            x = x_vp * math.sqrt(1 + float(sigmas[0]) ** 2)
            return getattr(kd, name)(denoiser, x, sigmas, disable=True, **opts)
        return run

    common = dict(num_train_timesteps=1000, trained_betas=betas.float().numpy(), timestep_spacing="linspace")

    def dpm(algorithm):
        return lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_order=2, **common)

    loops = {
        "dpmpp_2m": {"fastint": fastint_run("dpmpp_2m"),
                     "diffusers DPMSolverMultistep (dpmsolver++)": diffusers_run(dpm("dpmsolver++"))},
        "dpmpp_2m_sde": {"fastint": fastint_run("dpmpp_2m_sde", eta=1.0),
                         "diffusers DPMSolverMultistep (sde-dpmsolver++)": diffusers_run(dpm("sde-dpmsolver++"))},
        "euler": {"fastint": fastint_run("euler"),
                  "diffusers EulerDiscrete": diffusers_run(lambda: diffusers.EulerDiscreteScheduler(**common))},
    }
    if kd is not None:
        loops["dpmpp_2m"]["k-diffusion sample_dpmpp_2m"] = kd_run("sample_dpmpp_2m")
        loops["dpmpp_2m_sde"]["k-diffusion sample_dpmpp_2m_sde (BrownianTree noise)"] = kd_run("sample_dpmpp_2m_sde")

        loops["dpmpp_2m_sde"]["k-diffusion sample_dpmpp_2m_sde (randn noise)"] = _kd_randn(
            kd, denoiser, x_vp, ab, steps, vp_discrete)
        loops["euler"]["k-diffusion sample_euler"] = kd_run("sample_euler")
    return loops


def _kd_randn(kd, denoiser, x_vp, ab, steps, vp_discrete):
    def run():
        sigmas = vp_discrete(ab, steps, spacing="linspace").sigmas.to(device=x_vp.device, dtype=torch.float32)
        x = x_vp * math.sqrt(1 + float(sigmas[0]) ** 2)
        return kd.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True,
                                      noise_sampler=lambda s, s_next: torch.randn_like(x))
    return run


def end_to_end(batch: int = 16, steps: int = 20, sample_size: int = 8, train_seconds: float = 0.0,
               repeats: int = 5, solvers: Sequence[str] = E2E_SOLVERS, device: Optional[str] = None,
               backend: Optional[str] = None, unet=None, verbose: bool = True, samples_png: Optional[str] = None
               ) -> List[dict]:
    """Rows ``{method, sampler, total_s, model_s, overhead_s, model_calls, ...}`` (medians over ``repeats``
    interleaved runs; each run's model time is from the same run). ``samples_png``: also write a grid of each
    sampler's samples (meaningful with ``train_seconds > 0``)."""
    device = device or default_device()
    if backend is None:
        backend = "cuda" if device == "cuda" and "cuda" in available_backends("cuda") else (
            "cpp" if device == "cpu" and "cpp" in available_backends("cpu") else "auto")
    unet = unet if unet is not None else build_unet(sample_size, train_seconds, verbose=verbose)
    unet = unet.to(device).eval()
    timed = TimedModel(unet, device)
    try:
        kd = load_k_diffusion_sampling()
    except Exception as exc:  # noqa: BLE001
        kd = None
        if verbose:
            print(f"  (k-diffusion unavailable: {exc!r})", file=sys.stderr)
    x_vp = torch.randn(batch, 1, sample_size, sample_size, generator=torch.Generator().manual_seed(0)).to(device)
    loops = _loops(timed, x_vp, steps, backend, kd)
    rows, images = [], {}
    with torch.inference_mode():
        for method in solvers:
            runs = loops[method]
            for run in runs.values():            # warm-up (allocator, first-call costs)
                run()
            results = {label: [] for label in runs}
            for _ in range(repeats):
                for label, run in runs.items():
                    timed.reset()
                    _sync(device)
                    t0 = time.perf_counter()
                    out = run()
                    _sync(device)
                    total = time.perf_counter() - t0
                    results[label].append((total, timed.model_seconds(), timed.calls))
                    images[(method, label)] = out
            for label, vals in results.items():
                total = statistics.median(v[0] for v in vals)
                overheads = [v[0] - v[1] for v in vals]
                model = statistics.median(v[1] for v in vals)
                rows.append({"method": method, "sampler": label, "total_s": total, "model_s": model,
                             "overhead_s": statistics.median(overheads), "model_calls": vals[0][2],
                             "batch": batch, "steps": steps, "sample_size": sample_size, "device": device,
                             "backend": backend if label == "fastint" else "-"})
            if verbose:
                for r in rows[-len(results):]:
                    print(f"  {method:13s} {r['sampler'][:48]:48s} total {r['total_s'] * 1e3:8.2f} ms  overhead "
                          f"{r['overhead_s'] * 1e3:7.2f} ms ({100 * r['overhead_s'] / r['total_s']:.1f}%)",
                          file=sys.stderr)
    if samples_png:
        _write_samples_png(images, samples_png)
    return rows


def _write_samples_png(images: Dict[tuple, torch.Tensor], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = list(images)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.1 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        x = images[key].detach().float().cpu().clamp(-1, 1)
        row = torch.cat(list(x[:16, 0]), dim=1)
        ax.imshow(row.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def e2e_markdown(rows: List[dict]) -> str:
    if not rows:
        return ""
    r0 = rows[0]
    out = [f"UNet2DModel ({r0['sample_size']}x{r0['sample_size']}, 1 channel, blocks (32, 64)), batch {r0['batch']}, "
           f"{r0['steps']} steps at equal NFE, {r0['device']}. Overhead = total - time inside the network's calls.",
           "", "| method | sampler | NFE | total ms | model ms | overhead ms | overhead % | overhead vs fastint |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    by_method: Dict[str, List[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in by_method.items():
        fast = next((r for r in rs if r["sampler"] == "fastint"), None)
        for r in rs:
            ratio = "-"
            if fast is not None and r is not fast:
                ratio = f"{r['overhead_s'] / max(fast['overhead_s'], 1e-9):.1f}x"
            name = r["sampler"] + (f" ({r['backend']})" if r["sampler"] == "fastint" else "")
            out.append(f"| {method} | {name} | {r['model_calls']} | {r['total_s'] * 1e3:.2f} | {r['model_s'] * 1e3:.2f}"
                       f" | {r['overhead_s'] * 1e3:.2f} | {100 * r['overhead_s'] / r['total_s']:.1f}% | {ratio} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CUDA graphs
def cuda_graph_bench(batch: int = 16, steps: int = 20, sample_size: int = 8, solvers: Sequence[str] = E2E_SOLVERS,
                     repeats: int = 20, unet=None) -> List[dict]:
    """GPU only: eager ``fastint.sample`` vs the replay of the whole loop captured by ``capture_sampler``."""
    if not torch.cuda.is_available():
        return []
    import fastint
    from fastint.cuda_graph import capture_sampler
    from fastint.models import DiscreteVPDenoiser
    from fastint.schedules import alphas_cumprod_from_betas, vp_discrete
    ab = alphas_cumprod_from_betas(train_betas())
    unet = (unet if unet is not None else build_unet(sample_size)).to("cuda").eval()
    denoiser = DiscreteVPDenoiser(unet, ab, prediction_type="epsilon")
    sigmas = vp_discrete(ab, steps, spacing="linspace").sigmas
    x = torch.randn(batch, 1, sample_size, sample_size, device="cuda") * math.sqrt(1 + sigmas[0].item() ** 2)
    rows = []
    with torch.inference_mode():
        for solver in solvers:
            def eager():
                return fastint.sample(denoiser, x, sigmas, solver, seed=0, check_finite="off")
            replay = capture_sampler(denoiser, x, sigmas, solver, seed=0)
            diff = (eager() - replay(x)).abs().max().item()
            med = measure_side_by_side({"eager": eager, "graph": lambda: replay(x)}, "cuda", rounds=repeats)
            rows.append({"solver": solver, "eager_s": med["eager"], "graph_s": med["graph"], "max_abs_diff": diff,
                         "batch": batch, "steps": steps})
    return rows


def graph_markdown(rows: List[dict]) -> str:
    if not rows:
        return "(no CUDA device: the CUDA-graph benchmark did not run)"
    out = ["| solver | eager ms | CUDA graph ms | speed-up | max abs diff |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['solver']} | {r['eager_s'] * 1e3:.3f} | {r['graph_s'] * 1e3:.3f} | "
                   f"{r['eager_s'] / r['graph_s']:.2f}x | {r['max_abs_diff']:.3g} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ the command
def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="fastint bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--full", action="store_true",
                        help="all sizes (64K..16M on CPU, 64K..64M on GPU) and more repeats (minutes)")
    parser.add_argument("--large", action="store_true", help="add 64M elements on the CPU (slow on few cores)")
    parser.add_argument("--sizes", default=None, help="comma-separated element counts (overrides the defaults)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32,bf16,fp16")
    parser.add_argument("--backends", default=None,
                        help="fused-op backends to time (default: every available one except compile)")
    parser.add_argument("--train-seconds", type=float, default=0.0,
                        help="train the end-to-end UNet on digits this long first (default 0: random weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: micro,e2e,graph")
    parser.add_argument("--out", default=None, help="directory for results.md, rows.json and plots")
    return parser


def _command_line() -> str:
    argv = sys.argv
    if argv[1:2] == ["bench"]:
        return " ".join(["python -m fastint"] + argv[1:])
    if argv[0].endswith("bench_suite.py"):
        return " ".join(["python -m benchmarks.bench_suite"] + argv[1:])
    return " ".join(argv)


def run(args) -> str:
    import json
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastint bench: --device cuda but CUDA is not available")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    elif args.full:
        sizes = list(CPU_SIZES) + ([LARGE_SIZE] if device == "cuda" or args.large else [])
    else:
        sizes = list(QUICK_SIZES) + ([2 ** 24, LARGE_SIZE] if device == "cuda" else [])
        if args.large and LARGE_SIZE not in sizes:
            sizes.append(LARGE_SIZE)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    rounds, repeats = (9, 7) if args.full else (5, 3)
    date = datetime.date.today().isoformat()
    header = [f"# fastint bench ({date})", "", f"machine: {machine_description(device)}", "",
              f"command: `{_command_line()}`", ""]
    sections, payload = [], {"device": device, "machine": machine_description(device), "date": date}
    if "micro" not in skip:
        print("microbenchmarks of the fused step ...", file=sys.stderr)
        rows = microbench(sizes, dtypes, backends=backends, device=device, rounds=rounds)
        payload["micro"] = rows
        sections += ["## Fused step vs floor and peers", "", micro_markdown(rows), ""]
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            png = write_plot(rows, os.path.join(args.out, f"micro_{device}.png"))
            if png:
                sections += [f"![bandwidth]({os.path.basename(png)})", ""]
    if "e2e" not in skip:
        print("end to end with a small UNet ...", file=sys.stderr)
        png = os.path.join(args.out, f"samples_{device}.png") if args.out else None
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        rows = end_to_end(batch=args.batch, steps=args.steps, train_seconds=args.train_seconds, repeats=repeats,
                          device=device, samples_png=png)
        payload["e2e"] = rows
        sections += ["## End to end: sampler overhead with a small UNet", "", e2e_markdown(rows), ""]
    if "graph" not in skip and device == "cuda":
        print("CUDA graph of the whole loop ...", file=sys.stderr)
        rows = cuda_graph_bench(batch=args.batch, steps=args.steps)
        payload["graph"] = rows
        sections += ["## Whole-loop CUDA graph replay vs eager", "", graph_markdown(rows), ""]
    text = "\n".join(header + sections)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"results_{device}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, f"rows_{device}.json"), "w") as f:
            json.dump(payload, f, indent=1)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
