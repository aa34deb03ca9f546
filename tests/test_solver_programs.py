"""Solvers are host programs: ``fastint/solvers/`` holds no tensor operation, and every solver's program runs to its
end against a fake executor that answers with opaque handles (so no request can depend on a tensor value)."""

import ast
import math
import pathlib

import pytest

import fastint
from fastint.solvers import SOLVERS, get_solver
from fastint.solvers.program import Combine, Denoise, Gradient, NoiseEvent, Report, model_evaluations, record

SOLVER_DIR = pathlib.Path(fastint.__file__).parent / "solvers"
TENSOR_MODULES = {"torch", "numpy", "fastint.ops", "fastint.executor", "fastint.models"}


def _guidance(x, sigma):
    raise AssertionError("a program never calls the guidance itself")


OPTIONS = {"lie_trotter": {"guidance": _guidance}, "strang": {"guidance": _guidance}}
CONFIGS = [(name, OPTIONS.get(name, {})) for name in SOLVERS] + [
    ("euler", {"s_churn": 1.0}), ("heun", {"s_churn": 1.0, "s_noise": 0.0}), ("dpmpp_3m", {"third_order": "exact"}),
    ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.0}), ("seeds_2", {"solver_type": "phi_2"}),
    ("restart", {"restart_list": {0.5: [3, 2, 2.0]}}),
    ("restart", {"restart_info": {"0": [3, 1, 0.5, 2.0]}, "main_solver": "dpmpp_2m", "inner_solver": "dpmpp_3m",
                 "restart_gamma": 0.0}),
    ("plms", {"guidance": _guidance, "order": 2}), ("strang", {"guidance": _guidance, "diffusion_solver": "heun"})]
SIGMAS = [10.0, 5.0, 2.5, 1.2, 0.6, 0.3, 0.0]


def _imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "fastint.solvers"
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            yield (base + "." + node.module if node.level and node.module else base if node.level else node.module)


def test_solver_files_import_no_tensor_code():
    files = sorted(SOLVER_DIR.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        for module in _imported_modules(path):
            if path.name == "guidance.py" and module == "fastint.guidance":
                continue  # re-exported helpers that build guidance functions (run by the executor)
            assert not any(module == m or module.startswith(m + ".") for m in TENSOR_MODULES), (path.name, module)


class FakeExecutor:
    """Answers every request with a fresh opaque object and checks what the program asks for."""

    def __init__(self):
        self.requests = []
        self.handles = set()

    def handle(self):
        h = object()
        self.handles.add(h)
        return h

    def run(self, solver, sigmas):
        start = self.handle()
        program = solver.program(list(sigmas), start)
        sent = None
        while True:
            try:
                request = program.send(sent)
            except StopIteration as stop:
                assert stop.value in self.handles
                return stop.value
            self.requests.append(request)
            kind = type(request)
            if kind is Combine:
                assert 1 <= len(request.rows) <= 2
                for row in request.rows:
                    for coef, h in row:
                        assert type(coef) in (float, int) and math.isfinite(coef) and h in self.handles
                if request.noise is not None:
                    event, coeffs = request.noise
                    assert isinstance(event, NoiseEvent) and len(coeffs) <= 4
                    assert all(type(c) is float and math.isfinite(c) for c in coeffs)
                    assert len(event.intervals) >= len(coeffs)
                outs = tuple(self.handle() for _ in request.rows)
                sent = outs[0] if len(outs) == 1 else outs
            elif kind is Denoise or kind is Gradient:
                assert request.state in self.handles and type(request.sigma) is float
                # a model is never asked at sigma = 0; a classifier may be (strang's last second half step)
                assert request.sigma > 0 or kind is Gradient and request.sigma == 0
                sent = self.handle()
            else:
                assert kind is Report and request.state in self.handles and request.denoised in self.handles
                sent = None


def _shape(requests):
    """The requests with handles replaced by their order of appearance (opaque objects or integers alike)."""
    names = {}

    def name(h):
        return names.setdefault(id(h) if not isinstance(h, int) else ("int", h), len(names))

    out = []
    for r in requests:
        if type(r) is Combine:
            out.append(("combine", tuple(tuple((c, name(h)) for c, h in row) for row in r.rows),
                        None if r.noise is None else (r.noise[0].counter, r.noise[0].intervals, r.noise[1])))
        elif type(r) is Report:
            out.append(("report", r.i, name(r.state), r.sigma, r.sigma_hat, name(r.denoised)))
        else:
            out.append((type(r).__name__, name(r.state), r.sigma))
    return out


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_every_program_runs_on_a_fake_executor(name, options):
    solver = get_solver(name, **options)
    fake = FakeExecutor()
    fake.run(solver, SIGMAS)
    requests = fake.requests
    reports = [r for r in requests if type(r) is Report]
    steps = len(SIGMAS) - 1
    assert [r.i for r in reports] == list(range(len(reports))) and len(reports) >= steps
    evaluations = sum(type(r) is Denoise for r in requests)
    assert evaluations == model_evaluations(record(solver.program(list(SIGMAS), 0))) >= steps
    if not options:
        assert evaluations == get_solver(name).nfe(steps) or name in ("restart",)
    # the same requests whatever the handles are: nothing in a program depends on a result
    assert _shape(requests) == _shape([r for r, _ in record(solver.program(list(SIGMAS), 0)).entries])
    noisy = [r for r in requests if type(r) is Combine and r.noise is not None and any(r.noise[1])]
    assert bool(noisy) == solver.uses_noise(), name


def test_recorder_rejects_unknown_handles_and_requests():
    def bad_handle(sigmas, x):
        yield Denoise("nope", 1.0)

    def bad_request(sigmas, x):
        yield "denoise please"

    with pytest.raises(ValueError, match="no earlier request"):
        record(bad_handle([1.0, 0.0], 0))
    with pytest.raises(TypeError, match="yielded str"):
        record(bad_request([1.0, 0.0], 0))
