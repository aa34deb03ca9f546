"""A pytest plugin for time-boxed runs (benchmarks/gpu_check.sh): every failed or erroring test is appended to the
file named by ``FASTINT_FAILURE_LOG`` the moment its report arrives (with pytest-xdist, on the controller), with its
traceback, so a run stopped at its time limit still says what failed and why.

    FASTINT_FAILURE_LOG=failures.log python -m pytest -p benchmarks.pytest_failure_log ...
"""

import os

LIMIT = 4000  # characters of each traceback kept


def pytest_runtest_logreport(report):
    path = os.environ.get("FASTINT_FAILURE_LOG")
    if not path or not report.failed:
        return
    text = report.longreprtext or ""
    if len(text) > LIMIT:
        text = text[:LIMIT // 4] + "\n[...]\n" + text[-3 * LIMIT // 4:]
    with open(path, "a") as f:
        f.write(f"===== {report.nodeid} ({report.when})\n{text}\n")
