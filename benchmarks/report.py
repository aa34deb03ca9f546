"""Turn benchmark results into markdown tables and a PNG plot.

    python benchmarks/report.py bench.json [--out DIR] [--name micro_cpu]

``bench.json`` is either pytest-benchmark's ``--benchmark-json`` output of ``benchmarks/test_bench_fused_step.py``
or the ``rows_<device>.json`` written by ``python -m fastint bench --out DIR``. Writes ``<name>.md`` and
``<name>.png`` to ``--out`` (default: next to the input) and prints the markdown.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.bench_suite import e2e_markdown, graph_markdown, micro_markdown, write_plot  # noqa: E402


def rows_from(data: dict) -> dict:
    """``{"micro": rows, "e2e": rows, "graph": rows}`` from either input format."""
    if "benchmarks" in data:  # pytest-benchmark
        rows = []
        for b in data["benchmarks"]:
            info = b.get("extra_info", {})
            if "kind" not in info:
                continue
            rows.append({**{k: info[k] for k in ("kind", "elements", "dtype", "candidate", "group", "bytes",
                                                 "device")},
                         "seconds": b["stats"]["median"] / info.get("calls_per_round", 1)})
        return {"micro": rows, "machine": data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "")}
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = rows_from(json.load(f))
    out = args.out or os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out, exist_ok=True)
    micro = data.get("micro") or []
    device = (micro or data.get("e2e") or [{"device": "cpu"}])[0]["device"]
    name = args.name or f"report_{device}"
    parts = []
    if micro:
        parts += ["## Fused step vs floor and peers", "", micro_markdown(micro), ""]
        png = write_plot(micro, os.path.join(out, name + ".png"))
        if png:
            parts += [f"![bandwidth]({os.path.basename(png)})", ""]
    if data.get("e2e"):
        parts += ["## End to end", "", e2e_markdown(data["e2e"]), ""]
    if data.get("graph"):
        parts += ["## Whole-loop CUDA graph", "", graph_markdown(data["graph"]), ""]
    text = "\n".join(parts)
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
