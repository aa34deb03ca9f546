"""End to end with a real network: a small diffusers UNet2DModel sampled by fastint and by the peers at equal NFE.

    python benchmarks/bench_end_to_end.py [--train-seconds 45] [--batch 16] [--steps 20] [--sample-size 8]
                                          [--threads 1] [--repeats 5] [--out DIR]

The UNet (1 channel, blocks (32, 64), one layer per block, no attention) is built from a config (no downloads) and,
with ``--train-seconds > 0``, trained that long on scikit-learn's digits (cached in a temp dir, never committed) so
that the samples are digits (``samples_<device>.png``); with 0 its weights are random (time only). Per solver
(dpmpp_2m, dpmpp_2m_sde, euler): fastint, diffusers' scheduler loop for the same method and k-diffusion's sampler,
each run ``--repeats`` times interleaved; the table gives total time, time inside the network's calls and the
sampler overhead (total - model). See benchmarks.bench_suite.end_to_end.
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks import bench_suite as bs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=45.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--solvers", default=",".join(bs.E2E_SOLVERS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or bs.default_device()
    png = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        png = os.path.join(args.out, f"samples_{device}_{args.sample_size}px.png")
    rows = bs.end_to_end(batch=args.batch, steps=args.steps, sample_size=args.sample_size,
                         train_seconds=args.train_seconds, repeats=args.repeats, device=device,
                         solvers=[s for s in args.solvers.split(",") if s], samples_png=png)
    text = "\n".join([f"machine: {bs.machine_description(device)}", f"date: {datetime.date.today()}",
                      "command: `python benchmarks/bench_end_to_end.py " + " ".join(argv if argv is not None
                                                                                    else sys.argv[1:]) + "`",
                      "", bs.e2e_markdown(rows)])
    if device == "cuda":
        graph = bs.cuda_graph_bench(batch=args.batch, steps=args.steps, sample_size=args.sample_size)
        text += "\n\nWhole-loop CUDA graph (fastint.cuda_graph.capture_sampler) vs eager fastint.sample:\n\n" + \
            bs.graph_markdown(graph)
    print(text)
    if args.out:
        with open(os.path.join(args.out, f"e2e_{device}_{args.sample_size}px.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, f"e2e_{device}_{args.sample_size}px.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
