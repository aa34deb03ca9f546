"""The ``fastint`` command (also ``python -m fastint``): ``demo``, ``sample``, ``bench``, ``solvers``, ``backends``.

``demo`` and ``bench`` are thin entry points: their code lives in the repository's ``examples/`` and ``benchmarks/``
(not in the installed package) and is imported from the checkout only when they run (``fastint._checkout``).

``fastint sample`` also runs under ``torchrun`` (``torchrun --nproc_per_node=N -m fastint sample ...``): the seed
list is sharded over the ranks and rank 0 writes the gathered result (``fastint.distributed``).

Bad arguments (an unknown solver or backend, malformed budgets) print a usage line and the reason, and exit with
status 2 (argparse's convention).
"""

import argparse
import os
import sys
from typing import List, Optional, Sequence

import torch


def _budgets(text: str) -> List[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"budgets must be comma-separated integers >= 1 (e.g. 10,20,40), got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"budgets must be >= 1, got {value}")
        values.append(value)
    return values


def _names(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one solver name (comma-separated)")
    return names


def _positive(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


# The demo's and the quick benchmark's defaults (examples/demo.py, benchmarks/bench.py take them as arguments).
DEMO_BUDGETS = (10, 20, 40)
DEMO_BATCH = 20000
BENCH_SIZES = (1 << 16, 1 << 20, 1 << 22)
BENCH_THREADS = 1  # a second thread on the shared 2-core machine measures the neighbours' load, not the kernel


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastint", description="fastint: fast integrators for diffusion models, every solver step one fused "
        "memory pass.", epilog="Run 'fastint <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    demo = sub.add_parser(
        "demo", help="sample quality vs NFE of every solver on the embedded 2-D Gaussian mixture",
        description="Sample the embedded 2-D Gaussian mixture (exact denoiser) with each solver at several NFE "
        "budgets (Karras sigmas 0.002..80, rho 7; float32), print sliced-Wasserstein and Frechet distances to exact "
        "samples with the sampling-noise floor, and write a table (results.md, results.json) and a plot "
        "(quality_vs_nfe.png) to the output directory.")
    demo.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    demo.add_argument("--batch", type=_positive(2), default=DEMO_BATCH,
                      help="samples per run (default: %(default)s)")
    demo.add_argument("--budgets", type=_budgets, default=list(DEMO_BUDGETS),
                      help="comma-separated NFE budgets; each solver takes the most steps that fit "
                      "(default: %s)" % ",".join(map(str, DEMO_BUDGETS)))
    demo.add_argument("--solvers", type=_names, default=None,
                      help="comma-separated solver names (default: all; see 'fastint solvers')")
    demo.add_argument("--backend", default=None,
                      help="fused-op backend (default: 'cpp' when available, else 'eager': no JIT compile time; "
                      "see 'fastint backends')")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initial batch, noise and exact sets "
                      "(default: %(default)s)")
    demo.add_argument("--threads", type=_positive(1), default=1,
                      help="torch CPU threads (default: %(default)s: the demo's tensors are small, a second OpenMP "
                      "thread gains little and stalls for seconds per op when another process busies its core)")
    demo.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    demo.set_defaults(handler=_cmd_demo, command_parser=demo)

    solvers = sub.add_parser("solvers", help="list the solvers (one line each); 'fastint solvers NAME' for details",
                             description="List every solver of fastint.list_solvers(): order, model evaluations "
                             "per step, whether it is stochastic and a summary, one line each (100 columns); with a "
                             "NAME, everything about that solver: order, NFE, noise, options with defaults.")
    solvers.add_argument("name", nargs="?", default=None, help="a solver name: show its details")
    solvers.set_defaults(handler=_cmd_solvers, command_parser=solvers)

    _add_sample_parser(sub)
    _add_bench_parser(sub)

    backends = sub.add_parser("backends", help="list the fused-op backends and why unavailable ones are",
                              description="List every fused-op backend of fastint.list_backends(): availability "
                              "(with the reason when unavailable), devices and dtypes.")
    backends.set_defaults(handler=_cmd_backends, command_parser=backends)
    return parser


def _seed_list(text: str) -> List[int]:
    """'0-99' (inclusive range), '1,5,9', or a mix: '0-3,10'."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must be integers or inclusive ranges like 0-99, comma-separated, "
                                             f"got {text!r}") from None
    return seeds


def _shape(text: str) -> List[int]:
    try:
        dims = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape must be positive integers like 2 or 3,32,32, got {text!r}")
    return dims


def _option(text: str):
    import ast
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"solver options are key=value (e.g. eta=0.5), got {text!r}")
    key, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a bare string such as solver_type=heun
    return key.strip(), value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _add_sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate samples for a list of seeds with a solver; writes them to a file (torchrun-able)",
        description="Sample one item per seed with a fastint solver and write the samples to a file (.pt: a dict "
        "with 'samples', 'seeds' and the run's settings; .npy: the array). Sample j starts from sigma_max * the "
        "Philox normals of seeds[j] and uses per-sample noise, so the result does not depend on the batch size "
        "chunks' placement or on the world size: launched with 'torchrun --nproc_per_node=N -m fastint sample ...' "
        "the seeds are sharded over the ranks (gloo on CPU, nccl on GPU) and rank 0 writes the gathered output, "
        "identical bit for bit to a single-process run. The file is written atomically and only when every rank "
        "succeeded.")
    p.add_argument("--out", required=True, help="output file (.pt or .npy)")
    p.add_argument("--model", default="mixture",
                   help="'mixture' (the built-in 2-D Gaussian mixture with its exact denoiser, default) or "
                   "'module:attr' naming a denoiser model(x, sigma_batch) -> x0 (VE convention), or "
                   "'module:factory()' to call a factory with no arguments first; the current directory is "
                   "importable")
    p.add_argument("--shape", type=_shape, default=None,
                   help="shape of one sample, e.g. 2 or 3,32,32 (default: the mixture's dimension; required for "
                   "other models)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seed_list, default=None,
                       help="per-sample seeds: integers and inclusive ranges, e.g. 0-1023 or 3,7,100-199")
    seeds.add_argument("--num-samples", type=_positive(1), default=None,
                       help="number of samples with seeds --seed, --seed + 1, ... (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="first seed with --num-samples (default: %(default)s)")
    p.add_argument("--solver", default="dpmpp_2m", help="solver name (see 'fastint solvers'; default: %(default)s)")
    p.add_argument("--option", "-o", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="a solver option, repeatable, e.g. -o eta=0.5 -o solver_type=heun")
    p.add_argument("--steps", type=_positive(1), default=20, help="solver steps (default: %(default)s)")
    p.add_argument("--schedule", choices=("karras", "exponential"), default="karras",
                   help="noise schedule (default: %(default)s)")
    p.add_argument("--sigma-min", type=_float, default=0.002, help="default: %(default)s")
    p.add_argument("--sigma-max", type=_float, default=80.0, help="default: %(default)s")
    p.add_argument("--rho", type=_float, default=7.0, help="Karras rho (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive(1), default=64,
                   help="samples per model batch; the seed list is cut into fixed chunks of this size, whole "
                   "chunks per rank (default: %(default)s)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="state dtype (default: %(default)s)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available, one GPU per local rank), 'cpu' "
                   "or 'cuda' (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="fused-op backend (default: %(default)s)")
    p.add_argument("--timeout", type=_float, default=600.0,
                   help="seconds a rank waits for the others in a distributed run (default: %(default)s)")
    p.add_argument("--threads", type=_positive(1), default=None, help="torch CPU threads per process")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=_cmd_sample, command_parser=p)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="quick benchmark: the fused step op vs the same update in plain PyTorch",
        description="Quick benchmark on this machine: the DPM-Solver++(2M) SDE update x <- a x + b D + c D_old "
        "(+ s z) as one fused_step call (noise generated in the kernel) vs plain PyTorch operators (+ torch.randn), "
        "with and without noise, for a few sizes; prints a table (median ms, fused GB/s, speed-up). The quick "
        "version: the full benchmark suite is in benchmarks/.")
    p.add_argument("--sizes", type=_budgets, default=list(BENCH_SIZES),
                   help="comma-separated elements per tensor (default: %s)" % ",".join(map(str, BENCH_SIZES)))
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="default: %(default)s")
    p.add_argument("--backend", default="auto", help="fused-op backend (default: %(default)s)")
    p.add_argument("--repeat", type=_positive(1), default=10, help="timed repeats per case (default: %(default)s)")
    p.add_argument("--threads", type=_positive(1), default=BENCH_THREADS,
                   help="torch CPU threads (default: %(default)s: on a shared or busy machine more threads measure "
                   "the other processes' load, not the kernel)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--suite", action="store_true",
                   help="run the quick version of the whole benchmark suite instead (benchmarks/bench_suite.py: "
                   "fused step per backend and step kind vs floor, PyTorch, diffusers, k-diffusion; a small UNet "
                   "trained for a few seconds, end to end; whole-loop CUDA graphs on GPU); uses --device and "
                   "--threads; takes about 6 minutes on 2 CPU cores (most of it the end-to-end part)")
    p.add_argument("--out", default=None, help="with --suite: directory for results_<device>.md, JSON and plots")
    p.set_defaults(handler=_cmd_bench, command_parser=p)


def _load_model(spec: str):
    import importlib
    if spec == "mixture":
        from .models import default_mixture
        return default_mixture()
    if ":" not in spec:
        raise ValueError(f"--model must be 'mixture' or 'module:callable', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    call = attr.endswith("()")
    attr = attr[:-2] if call else attr
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if call:
        obj = obj()
    if not callable(obj):
        raise ValueError(f"--model {spec!r} is not callable as model(x, sigma_batch)")
    return obj


def _cmd_sample(args, parser) -> int:
    from . import distributed
    from .schedules import exponential, karras
    from .solvers import SOLVERS, get_solver
    if args.solver not in SOLVERS:
        parser.error(f"unknown solver {args.solver!r}; available: {', '.join(SOLVERS)}")
    options = dict(args.option)
    try:
        get_solver(args.solver, **options)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if not args.out.endswith((".pt", ".npy", ".pth")):
        parser.error(f"--out must end in .pt, .pth or .npy, got {args.out!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"the directory of --out does not exist: {out_dir}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = _load_model(args.model)
    except ValueError as exc:
        parser.error(str(exc))
    shape = args.shape
    if shape is None:
        if args.model != "mixture":
            parser.error("--shape is required with a custom --model")
        shape = [model.dim]
    seeds = args.seeds if args.seeds is not None else         list(range(args.seed, args.seed + (args.num_samples or 16)))
    schedule = karras if args.schedule == "karras" else exponential
    try:
        sigmas = schedule(args.steps, args.sigma_min, args.sigma_max, *([args.rho] if args.schedule == "karras"
                                                                       else []))
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    rank, world, device = distributed.init_from_env(args.device, args.timeout)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        samples = distributed.sample_seeds(model, seeds, shape, sigmas, args.solver, batch_size=args.batch_size,
                                           dtype=DTYPES[args.dtype], device=device, backend=args.backend,
                                           progress=progress, **options)
        if rank == 0:
            distributed.save_samples(args.out, samples, seeds, {
                "solver": args.solver, "options": {k: v for k, v in options.items() if not callable(v)},
                "sigmas": sigmas, "model": args.model, "batch_size": args.batch_size, "world_size": world})
            print(f"wrote {samples.shape[0]} samples of shape {tuple(shape)} to {args.out} "
                  f"({args.solver}, {args.steps} steps, {world} process{'es' if world > 1 else ''})",
                  file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - one clear line per rank, non-zero exit
        print(f"fastint sample: error on rank {rank}/{world}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _from_checkout(name: str, command: str, parser):
    from ._checkout import CheckoutMissing, import_from_checkout
    try:
        return import_from_checkout(name, command)
    except CheckoutMissing as exc:
        print(f"fastint {command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _cmd_bench(args, parser) -> int:
    torch.set_num_threads(args.threads)
    if args.suite:
        suite = _from_checkout("benchmarks.bench_suite", "bench", parser)
        print(f"fastint bench --suite: {args.threads} thread(s); the quick suite takes about 6 minutes on 2 CPU "
              "cores (microbenchmarks ~1 min, the small UNet's training and end-to-end runs the rest)", flush=True)
        return suite.main(["--device", args.device, "--threads", str(args.threads)]
                          + (["--out", args.out] if args.out else []))
    bench = _from_checkout("benchmarks.bench", "bench", parser)
    format_table, resolved_backend, run_bench = bench.format_table, bench.resolved_backend, bench.run_bench
    dtype = DTYPES[args.dtype]
    try:
        name = resolved_backend(args.device, dtype, args.backend)
    except (RuntimeError, ValueError, KeyError) as exc:
        parser.error(f"backend {args.backend!r} cannot run on {args.device} {args.dtype}: {exc}")
    rows = run_bench(args.sizes, device=args.device, dtype=dtype, backend=args.backend, repeat=args.repeat,
                     progress=not args.no_progress and sys.stderr.isatty())
    print(f"fastint bench (quick): {args.device}, {args.dtype}, {torch.get_num_threads()} thread(s) (--threads), "
          f"median of {args.repeat}")
    print(format_table(rows, name))
    return 0


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


WIDTH = 100  # the terminal width `fastint solvers` fits


def _stochastic(row: dict) -> str:
    """'yes', 'when eta > 0' (eta defaults to 0), 'no', or 'churn only' (the EDM solvers: s_churn adds noise)."""
    if row["stochastic"]:
        eta = row["options"].get("eta")
        return "when eta > 0" if eta == 0 else "yes"
    return "churn only" if "s_churn" in row["options"] else "no"


def _short(value) -> str:
    """The leading number of an order or NFE entry ('2 (1 on the last step to 0)' -> '2*'); '*': details differ."""
    text = str(value).strip()
    head = text.split(" ", 1)[0].rstrip(";,")
    return head if head == text else head + "*"


def _cmd_solvers(args, parser) -> int:
    from .solvers import list_solvers
    solvers = {s["name"]: s for s in list_solvers()}
    if args.name is not None:
        if args.name not in solvers:
            parser.error(f"unknown solver {args.name!r}; available: {', '.join(solvers)}")
        s = solvers[args.name]
        options = "\n".join(f"  {k} = {v!r}" for k, v in s["options"].items()) or "  (none)"
        print(f"{s['name']}: {s.get('summary', '')}\n"
              f"order:            {s['order_note']}\n"
              f"NFE per step:     {s['nfe_per_step']} (NFE of 10 steps: {s['nfe'](10)})\n"
              f"stochastic:       {_stochastic(s)}\n"
              f"options (defaults):\n{options}")
        return 0
    headers = ["solver", "order", "NFE/step", "stochastic", "summary"]
    rows = [[s["name"], _short(s["order_note"]), _short(s["nfe_per_step"]), _stochastic(s), s.get("summary", "")]
            for s in solvers.values()]
    fixed = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    room = WIDTH - sum(fixed) - 2 * len(fixed)
    for r in rows:
        r[-1] = r[-1] if len(r[-1]) <= room else r[-1][:room - 3].rstrip() + "..."
    print(_table(headers, rows))
    print("\n* more detail: 'fastint solvers NAME' (order, NFE, noise and options with defaults)")
    return 0


def _demo_backend() -> str:
    """The backend the demo uses by default: the compiled kernel, else eager (no JIT compile time)."""
    from .ops import list_backends
    available = {b["name"] for b in list_backends() if b["available"]}
    return "cpp" if "cpp" in available else "eager"


def _cmd_backends(args, parser) -> int:
    from .ops import list_backends
    rows = [[b["name"], "yes" if b["available"] else "no", "/".join(b["devices"]), ",".join(b["dtypes"]),
             b["description"] if b["available"] else f"unavailable: {b['reason']}"] for b in list_backends()]
    print(_table(["backend", "available", "devices", "dtypes", "description / reason"], rows))
    from .ops.registry import AUTO_ORDER
    print()
    for device, order in AUTO_ORDER.items():
        print(f"auto on {device} tensors: the first available of {', '.join(order)}")
    print(f"the demo uses '{_demo_backend()}' (the fastest backend without JIT compile time)")
    return 0


def _cmd_demo(args, parser) -> int:
    from .ops import list_backends
    demo_main = _from_checkout("examples.demo_main", "demo", parser)
    if args.solvers is not None:
        known = [e.name for e in demo_main.demo.available_entries()]
        unknown = [n for n in args.solvers if n not in known]
        if unknown:
            parser.error(f"unknown solver(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if args.backend is not None and args.backend != "auto":
        backends = {b["name"]: b for b in list_backends()}
        if args.backend not in backends:
            parser.error(f"unknown backend {args.backend!r}; known: {', '.join(backends)} or 'auto'")
        if not backends[args.backend]["available"]:
            parser.error(f"backend {args.backend!r} is unavailable: {backends[args.backend]['reason']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        demo_main.run(out_dir=args.out, batch=args.batch, budgets=args.budgets, solvers=args.solvers,
                      backend=args.backend, seed=args.seed, plot=not args.no_plot)
    finally:
        torch.set_num_threads(threads)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args, args.command_parser)  # the command's parser, for its usage line in errors
    except BrokenPipeError:  # `fastint solvers | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
