"""The demo's main table: sample quality versus model evaluations for every solver (``fastint demo`` runs it
through ``examples/demo_main.py``).

It samples the embedded analytic target ``fastint.models.default_mixture()`` (a 2-D, 8-component Gaussian mixture
with its exact denoiser) with each method at several NFE budgets, on Karras sigmas, from the same N(0, sigma_max^2)
initial batch in float32, and measures the distance of the result to an independent set of exact samples
(``GaussianMixture.sample``): the sliced 2-Wasserstein distance and the Frechet distance (``fastint.metrics``). The
"floor" is the same distance for sets of exact samples of the same size (mean and range over a few independent sets):
what sampling noise alone costs at this batch size. A method whose distance lies in the floor's range is as good as
exact sampling for this batch; the distance of a single run fluctuates by about that range.

Outputs: the table on stdout, and in the output directory ``results.md`` (the table), ``results.json`` (the rows)
and ``quality_vs_nfe.png`` (distance vs NFE, log scale, one line per method, the floor dashed).

Extending it: every row comes from a ``DemoEntry`` (a name, the NFE a number of steps costs, and a runner).
``solver_entries()`` makes one per ``fastint.list_solvers()`` row; other methods (Restart, guided splitting,
augmented-space CLD/PSLD samplers) are added with ``register_entry(DemoEntry(...))`` (``demo_main`` does it), with their own ``section``, and
appear in the table, the plot and ``--solvers``. The NFE printed is always counted (a counting model wrapper), never
taken from the plan.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, TextIO

import torch

from fastint import schedules
from fastint.metrics import frechet_distance, random_directions, sliced_wasserstein
from fastint.models.gaussian_mixture import GaussianMixture, default_mixture
from fastint.ops import list_backends
from fastint.sampling import sample
from fastint.solvers import list_solvers

DEFAULT_BUDGETS = (10, 20, 40)
DEFAULT_BATCH = 20000
FLOOR_DRAWS = 5  # independent exact sets averaged for the floor
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
PROJECTIONS = 256
PLOT_NAME, TABLE_NAME, JSON_NAME = "quality_vs_nfe.png", "results.md", "results.json"
EXPLANATION = ("Distance of each method's samples to an independent set of exact samples of the target (lower is "
               "better); the floor is the same distance for exact samples, i.e. what sampling noise alone costs.")


# ---------------------------------------------------------------------------------------------------- the setup
class CountingModel:
    """Wraps a denoiser and counts its calls: the NFE reported is what a run actually used."""

    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return self.model(x, sigma, **kwargs)


@dataclass
class DemoSetup:
    """What every runner shares: the target, the initial batch, the schedule, the backend and the seed."""

    target: GaussianMixture
    x_init: torch.Tensor  # (batch, dim), float32, N(0, sigma_max^2)
    backend: str
    seed: int
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO

    def sigmas(self, steps: int) -> torch.Tensor:
        """Karras sigmas for ``steps`` steps (``steps + 1`` values ending in 0)."""
        return schedules.karras(steps, self.sigma_min, self.sigma_max, self.rho)


# A runner samples with ``steps`` steps: runner(setup, model, x, steps) -> samples shaped like x. It must call only
# ``model`` (the counting wrapper) for model evaluations and must not modify ``x``.
Runner = Callable[[DemoSetup, Callable, torch.Tensor, int], torch.Tensor]


@dataclass
class DemoEntry:
    """One method of the demo: ``nfe(steps)`` is the planned cost of ``steps`` steps (used to fit the budget).

    ``min_steps`` is the fewest steps that still run the method (``min_steps_reason`` says why): a budget that cannot
    pay for them skips the method with that reason instead of running something else under its name. ``note`` is
    printed under the table when a row of this method lies far above the floor."""

    name: str
    nfe: Callable[[int], int]
    run: Runner
    section: str = "solvers"
    description: str = ""
    min_steps: int = 2
    min_steps_reason: str = "one step is a single denoising call, none of the method's own updates"
    note: str = ""

    def steps_for_budget(self, budget: int, max_steps: int = 10_000) -> int:
        """The most steps whose planned NFE fits in ``budget`` (at least 1)."""
        steps = 1
        while steps < max_steps and self.nfe(steps + 1) <= budget:
            steps += 1
        return steps


def _solver_runner(name: str) -> Runner:
    def run(setup: DemoSetup, model: Callable, x: torch.Tensor, steps: int) -> torch.Tensor:
        return sample(model, x, setup.sigmas(steps), solver=name, seed=setup.seed, backend=setup.backend)
    return run


def solver_entries() -> List[DemoEntry]:
    """One entry per ``fastint.list_solvers()`` row, with its default options."""
    return [DemoEntry(row["name"], row["nfe"], _solver_runner(row["name"]),
                      description=row.get("summary", "")) for row in list_solvers()]


_EXTRA_ENTRIES: List[DemoEntry] = []


def register_entry(entry: DemoEntry) -> DemoEntry:
    """Add a method to the demo (e.g. Restart, guided splitting, CLD/PSLD samplers), replacing one of the same name."""
    _EXTRA_ENTRIES[:] = [e for e in _EXTRA_ENTRIES if e.name != entry.name] + [entry]
    return entry


def available_entries() -> List[DemoEntry]:
    """Every method the demo can run: the registered solvers, then the extra entries."""
    entries = {e.name: e for e in solver_entries()}
    for e in _EXTRA_ENTRIES:
        entries[e.name] = e
    return list(entries.values())


def default_backend() -> str:
    """The fastest backend that needs no JIT compilation: the compiled C++ kernel if it is available, else eager
    (torch.compile's compile time per call signature would dominate a short demo)."""
    available = {b["name"] for b in list_backends() if b["available"]}
    return "cpp" if "cpp" in available else "eager"


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class DemoRow:
    name: str
    section: str
    budget: int
    steps: int
    nfe: int
    sliced_wasserstein: float
    frechet: float
    seconds: float


@dataclass
class DemoResult:
    rows: List[DemoRow]
    floor_sliced_wasserstein: float  # mean over FLOOR_DRAWS exact sets
    floor_frechet: float
    floor_sliced_wasserstein_range: List[float]  # [min, max] over the draws
    floor_frechet_range: List[float]
    batch: int
    budgets: List[int]
    backend: str
    seed: int
    threads: int
    wall_seconds: float = 0.0
    files: Dict[str, str] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)  # "name at NFE budget b: skipped, ..." lines
    notes: Dict[str, str] = field(default_factory=dict)  # the entries' notes on their outliers

    def table(self, markdown: bool = False) -> str:
        return format_table(self, markdown=markdown)


def _check_budgets(budgets: Sequence[int]) -> List[int]:
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"NFE budgets must be integers >= 1, got {b!r}")
        out.append(b)
    if not out:
        raise ValueError("give at least one NFE budget")
    return sorted(set(out))


def select_entries(names: Optional[Sequence[str]] = None) -> List[DemoEntry]:
    """The entries named (all when None), in the order given; unknown names raise, naming the valid ones."""
    entries = available_entries()
    if names is None:
        return entries
    by_name = {e.name: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown solver(s) {', '.join(map(repr, unknown))}; available: {', '.join(by_name)}")
    if not names:
        raise ValueError("give at least one solver")
    return [by_name[n] for n in dict.fromkeys(names)]


def run_demo(out_dir: Optional[str] = "demo_out", batch: int = DEFAULT_BATCH,
             budgets: Sequence[int] = DEFAULT_BUDGETS, solvers: Optional[Sequence[str]] = None,
             backend: Optional[str] = None, seed: int = 0, plot: bool = True,
             stream: Optional[TextIO] = None) -> DemoResult:
    """Run the demo: print the table to ``stream`` (default stdout), write the files to ``out_dir`` (None: write
    nothing) and return the rows. ``solvers`` names entries of ``available_entries()`` (default: all); ``backend``
    defaults to ``default_backend()``; ``seed`` fixes the initial batch, the noise, the exact sets and the
    projection directions."""
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch must be an integer >= 2, got {batch!r}")
    budgets = _check_budgets(budgets)
    entries = select_entries(solvers)
    backend = backend or default_backend()

    target = default_mixture()
    gen = torch.Generator().manual_seed(seed)
    x_init = (SIGMA_MAX * torch.randn(batch, target.dim, generator=gen, dtype=torch.float64)).to(torch.float32)
    reference = target.sample(batch, generator=torch.Generator().manual_seed(seed + 1))
    setup = DemoSetup(target, x_init, backend, seed)
    directions = random_directions(PROJECTIONS, target.dim, torch.Generator().manual_seed(seed + 2))

    def distances(samples: torch.Tensor):
        return (sliced_wasserstein(samples, reference, projections=directions),
                frechet_distance(samples, reference))

    print(f"fastint demo: {target.components}-component Gaussian mixture in {target.dim}-D, batch {batch}, Karras "
          f"sigmas ({SIGMA_MIN} .. {SIGMA_MAX:g}, rho {RHO:g}), float32, backend '{backend}', "
          f"{torch.get_num_threads()} thread(s); {len(entries)} method(s) x {len(budgets)} NFE budget(s)",
          file=stream, flush=True)
    floor = [distances(target.sample(batch, generator=torch.Generator().manual_seed(seed + 100 + k)))
             for k in range(FLOOR_DRAWS)]
    floor_sw, floor_fd = ([f[i] for f in floor] for i in (0, 1))
    floor_mean = sum(floor_sw) / FLOOR_DRAWS
    print(f"floor (exact samples, {FLOOR_DRAWS} sets): sliced W2 {floor_mean:.4f}", file=stream, flush=True)

    rows: List[DemoRow] = []
    skipped: List[str] = []
    width = max(len(e.name) for e in entries)
    for k, entry in enumerate(entries, 1):
        # warm-up (first-call costs of the op and the model are not the method's): min_steps on a few samples
        entry.run(setup, CountingModel(target), x_init[:8], max(2, entry.min_steps))
        done = set()
        for budget in budgets:
            head = f"[{k:>2}/{len(entries)}] {entry.name:<{width}}  NFE budget {budget:>3}:"
            steps = entry.steps_for_budget(budget)
            if steps < entry.min_steps or entry.nfe(steps) > budget:
                why = (f"{entry.name} at NFE budget {budget}: skipped, it needs at least {entry.min_steps} steps = "
                       f"{entry.nfe(entry.min_steps)} NFE ({entry.min_steps_reason})")
                skipped.append(why)
                print(f"{head} skipped (needs {entry.nfe(entry.min_steps)} NFE: {entry.min_steps_reason})",
                      file=stream, flush=True)
                continue
            if steps in done:  # a budget change too small for another step of this method
                print(f"{head} same steps as the smaller budget, not run again", file=stream, flush=True)
                continue
            done.add(steps)
            model = CountingModel(target)
            t0 = time.perf_counter()
            out = entry.run(setup, model, x_init, steps)
            seconds = time.perf_counter() - t0
            sw, fd = distances(out.reshape(batch, -1))
            rows.append(DemoRow(entry.name, entry.section, budget, steps, model.calls, sw, fd, seconds))
            print(f"{head} {steps:>3} steps, {model.calls:>3} NFE, sliced W2 {sw:.4f} ({sw / floor_mean:.1f}x the "
                  f"floor), {seconds:.2f} s", file=stream, flush=True)

    result = DemoResult(rows, floor_mean, sum(floor_fd) / FLOOR_DRAWS,
                        [min(floor_sw), max(floor_sw)], [min(floor_fd), max(floor_fd)], batch, budgets, backend,
                        seed, torch.get_num_threads(), skipped=skipped,
                        notes={e.name: e.note for e in entries if e.note})
    print(file=stream)
    print(format_table(result), file=stream, flush=True)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        result.files["table"] = _write(os.path.join(out_dir, TABLE_NAME), format_table(result, markdown=True))
        result.wall_seconds = time.perf_counter() - start
        result.files["json"] = _write(os.path.join(out_dir, JSON_NAME), json.dumps(
            {k: v for k, v in asdict(result).items() if k != "files"}, indent=1))
        if plot:
            path = os.path.join(out_dir, PLOT_NAME)
            reason = plot_quality(result, path)
            if reason is None:
                result.files["plot"] = path
            else:
                print(f"plot skipped: {reason}", file=stream)
        print(file=stream)
        for path in result.files.values():
            print(f"wrote {path}", file=stream, flush=True)
    result.wall_seconds = time.perf_counter() - start
    return result


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- output
HEADERS = ("NFE budget", "method", "steps", "NFE used", "sliced W2", "Frechet", "SW / floor", "time [s]")


def _table_cells(result: DemoResult) -> List[List[str]]:
    """Rows grouped by budget; the best sliced W2 of each budget marked with '*'."""
    cells = []
    for budget in result.budgets:
        group = [r for r in result.rows if r.budget == budget]
        if not group:
            continue
        best = min(r.sliced_wasserstein for r in group)
        for r in group:
            mark = " *" if r.sliced_wasserstein == best and len(group) > 1 else ""
            cells.append([str(budget), r.name, str(r.steps), str(r.nfe), f"{r.sliced_wasserstein:.4f}{mark}",
                          f"{r.frechet:.2e}", f"{r.sliced_wasserstein / result.floor_sliced_wasserstein:.1f}",
                          f"{r.seconds:.3f}"])
        cells.append(None)  # group separator
    cells.append(["-", "floor: exact samples", "-", "-", f"{result.floor_sliced_wasserstein:.4f}",
                  f"{result.floor_frechet:.2e}", "1.0", "-"])
    return cells


def format_table(result: DemoResult, markdown: bool = False) -> str:
    cells = _table_cells(result)
    notes = [EXPLANATION,
             f"floor: mean over {FLOOR_DRAWS} independent exact sets of {result.batch} samples (sliced W2 "
             f"{result.floor_sliced_wasserstein_range[0]:.4f}..{result.floor_sliced_wasserstein_range[1]:.4f}, "
             f"Frechet {result.floor_frechet_range[0]:.2e}..{result.floor_frechet_range[1]:.2e}); rows within that "
             "range are as good as exact sampling.",
             f"sliced W2: sliced 2-Wasserstein distance ({PROJECTIONS} directions, units of the samples); Frechet: "
             "squared 2-Wasserstein distance between fitted Gaussians (the FID formula); SW / floor: sliced W2 "
             "over its floor; NFE used: model evaluations counted; * best sliced W2 at that budget."]
    same = identical_methods(result)
    if same:
        notes.append("identical results (the same method at these settings): "
                     + ", ".join(f"{name} = {other}" for name, other in same.items()) + ".")
    outliers = outlier_rows(result)
    if outliers:
        notes.append(f"far above the floor (more than {OUTLIER_RATIO:g}x): " + "; ".join(
            _explain_outlier(result, r) for r in outliers) + ".")
    if result.skipped:
        notes.append("not run: " + "; ".join(result.skipped) + ".")
    if markdown:
        lines = ["# fastint demo: sample quality vs NFE", "",
                 f"Target: `default_mixture()` (8-component 2-D Gaussian mixture), batch {result.batch}, Karras sigmas "
                 f"(sigma_min {SIGMA_MIN}, sigma_max {SIGMA_MAX:g}, rho {RHO:g}), float32 state, backend "
                 f"`{result.backend}`, seed {result.seed}, {result.threads} thread(s).", "",
                 notes[0], "", "| " + " | ".join(HEADERS) + " |",
                 "|" + "|".join(":---" if i == 1 else "---:" for i in range(len(HEADERS))) + "|"]
        for row in cells:
            if row is not None:
                lines.append("| " + " | ".join(c.replace("*", "\\*") for c in row) + " |")
        for note in notes[1:]:
            lines += ["", note]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells if r is not None)) for i, h in enumerate(HEADERS)]

    def line(values):
        return "  ".join(v.ljust(w) if i == 1 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rule = "  ".join("-" * w for w in widths)
    out = [notes[0], "", line(HEADERS), rule]
    for row in cells:
        out.append(rule if row is None else line(row))
    out += [""] + notes[1:]
    return "\n".join(out)


OUTLIER_RATIO = 20.0  # rows whose sliced W2 exceeds this multiple of the floor are explained under the table


def outlier_rows(result: DemoResult) -> List[DemoRow]:
    return [r for r in result.rows if r.sliced_wasserstein > OUTLIER_RATIO * result.floor_sliced_wasserstein]


def _explain_outlier(result: DemoResult, row: DemoRow) -> str:
    """'name at N NFE (k steps, Rx; rx at a larger budget): the entry's note': too few steps for this method, as
    its own larger budgets show, and why where the entry knows."""
    floor = result.floor_sliced_wasserstein
    text = f"{row.name} at {row.nfe} NFE ({row.steps} steps, {row.sliced_wasserstein / floor:.0f}x"
    larger = [r for r in result.rows if r.name == row.name and r.nfe > row.nfe]
    if larger:
        best = min(larger, key=lambda r: r.sliced_wasserstein)
        text += f"; {best.sliced_wasserstein / floor:.1f}x at {best.nfe} NFE: too few steps at this budget"
    text += ")"
    return text + (f": {result.notes[row.name]}" if row.name in result.notes else "")


def identical_methods(result: DemoResult) -> Dict[str, str]:
    """{name: earlier name} for methods whose every row equals an earlier method's (e.g. ddim with eta = 0 is
    euler): their lines coincide in the plot, so the legend says so."""
    series: Dict[str, tuple] = {}
    for r in result.rows:
        series.setdefault(r.name, ())
        series[r.name] += ((r.budget, r.nfe, r.sliced_wasserstein, r.frechet),)
    same, seen = {}, {}
    for name, values in series.items():
        if values in seen:
            same[name] = seen[values]
        else:
            seen[values] = name
    return same


# 24 distinguishable colours (no hue twice at one lightness) and 24 distinct markers: no two series share either
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
_MARKERS = ["o", "s", "D", "^", "v", "<", ">", "p", "P", "X", "h", "*", "d", "H", "8", "1", "2", "3", "4", "+",
            "x", "|", "_", "."]


def series_styles(n: int):
    """(colours, markers) for ``n`` series: the first 24 use each colour and each marker once; every further round
    of the 24 colours shifts the markers by one, so the (colour, marker) pairs stay distinct up to 24 x 24 series."""
    k = len(_PALETTE)
    return [_PALETTE[i % k] for i in range(n)], [_MARKERS[(i + i // k) % len(_MARKERS)] for i in range(n)]


def plot_quality(result: DemoResult, path: str) -> Optional[str]:
    """Write the sliced-W2 (and Frechet) vs NFE plot; returns None, or why no plot was written."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    names = list(dict.fromkeys(r.name for r in result.rows))
    same = identical_methods(result)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    colors, markers = series_styles(len(names))
    styles = ["-", "--", "-.", ":"]
    for i, name in enumerate(names):
        rows = sorted((r for r in result.rows if r.name == name), key=lambda r: r.nfe)
        style = dict(color=colors[i], linestyle=styles[i % len(styles)], marker=markers[i], markersize=6,
                     linewidth=1.4, markerfacecolor="none" if i % 2 else colors[i],
                     label=f"{name} (= {same[name]})" if name in same else name)
        nfe = [r.nfe for r in rows]
        axes[0].plot(nfe, [r.sliced_wasserstein for r in rows], **style)
        axes[1].plot(nfe, [max(r.frechet, 1e-12) for r in rows], **style)
    for ax, floor, span, title in (
            (axes[0], result.floor_sliced_wasserstein, result.floor_sliced_wasserstein_range,
             "sliced 2-Wasserstein to exact samples"),
            (axes[1], result.floor_frechet, result.floor_frechet_range,
             "Frechet distance (squared) to exact samples")):
        ax.axhspan(max(span[0], 1e-12), max(span[1], 1e-12), color="grey", alpha=0.2, linewidth=0)
        ax.axhline(max(floor, 1e-12), color="black", linestyle="--", linewidth=1.2,
                   label="floor: exact samples (band: range)")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ticks = result.budgets
        nfes = [r.nfe for r in result.rows] or ticks
        ax.set_xlim(min(min(nfes), min(ticks)) / 1.15, max(max(nfes), max(ticks)) * 1.15)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model evaluations)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("distance (lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"fastint demo: 2-D Gaussian mixture, batch {result.batch}, Karras sigmas, backend {result.backend}"
                 " (lower is better)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    legend = fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight", bbox_extra_artists=[legend, fig._suptitle])
    plt.close(fig)
    return None
