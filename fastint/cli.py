"""The ``fastint`` command (also ``python -m fastint``): ``demo``, ``solvers``, ``backends``.

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


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULT_BATCH, DEFAULT_BUDGETS
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
    demo.add_argument("--batch", type=_positive(2), default=DEFAULT_BATCH,
                      help="samples per run (default: %(default)s)")
    demo.add_argument("--budgets", type=_budgets, default=list(DEFAULT_BUDGETS),
                      help="comma-separated NFE budgets; each solver takes the most steps that fit "
                      "(default: %s)" % ",".join(map(str, DEFAULT_BUDGETS)))
    demo.add_argument("--solvers", type=_names, default=None,
                      help="comma-separated solver names (default: all; see 'fastint solvers')")
    demo.add_argument("--backend", default=None,
                      help="fused-op backend (default: 'cpp' when available, else 'eager': no JIT compile time; "
                      "see 'fastint backends')")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initial batch, noise and exact sets "
                      "(default: %(default)s)")
    demo.add_argument("--threads", type=_positive(1), default=None,
                      help="torch CPU threads (default: torch's default, %d here)" % torch.get_num_threads())
    demo.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    demo.set_defaults(handler=_cmd_demo, command_parser=demo)

    solvers = sub.add_parser("solvers", help="list the solvers: order, NFE per step, stochastic, options",
                             description="List every solver of fastint.list_solvers() with its order, model "
                             "evaluations per step, whether it is stochastic and its options with defaults.")
    solvers.set_defaults(handler=_cmd_solvers, command_parser=solvers)

    backends = sub.add_parser("backends", help="list the fused-op backends and why unavailable ones are",
                              description="List every fused-op backend of fastint.list_backends(): availability "
                              "(with the reason when unavailable), devices and dtypes.")
    backends.set_defaults(handler=_cmd_backends, command_parser=backends)
    return parser


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cmd_solvers(args, parser) -> int:
    from .solvers import list_solvers
    rows = []
    for s in list_solvers():
        options = ", ".join(f"{k}={v!r}" for k, v in s["options"].items()) or "-"
        rows.append([s["name"], str(s["order"]), str(s["nfe_per_step"]), "yes" if s["stochastic"] else "no",
                     options])
    print(_table(["solver", "order", "NFE/step", "stochastic", "options (defaults)"], rows))
    return 0


def _cmd_backends(args, parser) -> int:
    from .ops import list_backends
    from .demo import default_backend
    rows = [[b["name"], "yes" if b["available"] else "no", "/".join(b["devices"]), ",".join(b["dtypes"]),
             b["description"] if b["available"] else f"unavailable: {b['reason']}"] for b in list_backends()]
    print(_table(["backend", "available", "devices", "dtypes", "description / reason"], rows))
    from .ops.registry import AUTO_ORDER
    print()
    for device, order in AUTO_ORDER.items():
        print(f"auto on {device} tensors: the first available of {', '.join(order)}")
    print(f"the demo uses '{default_backend()}' (the fastest backend without JIT compile time)")
    return 0


def _cmd_demo(args, parser) -> int:
    from .demo import available_entries, run_demo
    from .ops import list_backends
    if args.solvers is not None:
        known = [e.name for e in available_entries()]
        unknown = [n for n in args.solvers if n not in known]
        if unknown:
            parser.error(f"unknown solver(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if args.backend is not None and args.backend != "auto":
        backends = {b["name"]: b for b in list_backends()}
        if args.backend not in backends:
            parser.error(f"unknown backend {args.backend!r}; known: {', '.join(backends)} or 'auto'")
        if not backends[args.backend]["available"]:
            parser.error(f"backend {args.backend!r} is unavailable: {backends[args.backend]['reason']}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_demo(out_dir=args.out, batch=args.batch, budgets=args.budgets, solvers=args.solvers,
             backend=args.backend, seed=args.seed, plot=not args.no_plot)
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
