"""Bit-identity check of sampling results between two checkouts of fastint (not a test: it needs two trees).

    PYTHONPATH=<old tree> python benchmarks/bit_identity.py save /tmp/old.pt
    PYTHONPATH=<new tree> python benchmarks/bit_identity.py compare /tmp/old.pt

Runs every solver through ``fastint.sample`` with a plain model (the analytic GaussianMixture denoiser) and with
fastint adapters (eps, v, x0 and flow predictions around a small deterministic network), deterministic and with
seeded in-kernel or injected noise, with and without a callback, on the compiled and the eager backend, plus the
k-diffusion drop-ins; ``compare`` reports every case whose result is not ``torch.equal`` to the saved one.
"""

import sys
import zlib

import torch

import fastint
from fastint.models import DiscreteVPDenoiser, FlowDenoiser, VEDenoiser, default_mixture
from fastint.schedules import alphas_cumprod_from_betas, betas_linear, karras, vp_discrete


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


class Network:
    """A small deterministic network: a fixed mix of its input and its timestep."""

    def __init__(self, dim: int):
        g = torch.Generator().manual_seed(11)
        self.w = torch.randn(dim, dim, generator=g) / dim ** 0.5

    def __call__(self, u, t):
        flat = u.reshape(u.shape[0], -1)
        tt = t.to(u.dtype).reshape(-1, 1) / 1000.0
        return (torch.tanh(flat @ self.w.to(u.dtype)) * (1 + tt) + 0.1 * flat * tt).reshape(u.shape)


def _injected(shape, name):
    g = torch.Generator().manual_seed(_seed(name))
    return lambda a, b: torch.randn(shape, generator=g)


def cases():
    gm = default_mixture()
    solvers = {r["name"]: {} for r in fastint.list_solvers()}
    solvers.update({"plms": {"guidance": lambda x, s: -0.1 * x}, "lie_trotter": {"guidance": lambda x, s: -0.1 * x},
                    "strang": {"guidance": lambda x, s: -0.1 * x}})
    extra = {"heun_churn": ("heun", {"s_churn": 2.0}), "euler_churn": ("euler", {"s_churn": 2.0}),
             "restart_preset": ("restart", {"restart_list": {0.5: [3, 2, 2.0]}}),
             "restart_2m": ("restart", {"restart_info": {"0": [3, 1, 0.5, 2.0]}, "main_solver": "dpmpp_2m",
                                        "inner_solver": "dpmpp_2m", "restart_gamma": 0.0}),
             "dpmpp_3m_exact": ("dpmpp_3m", {"third_order": "exact"}),
             "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
             "seeds_2_phi2": ("seeds_2", {"solver_type": "phi_2"}),
             "strang_heun": ("strang", {"guidance": lambda x, s: -0.1 * x, "diffusion_solver": "heun"})}
    runs = [(name, name, opts) for name, opts in solvers.items()] + [(k, n, o) for k, (n, o) in extra.items()]
    ab = alphas_cumprod_from_betas(betas_linear(1000, 1e-4, 0.02))
    x = torch.randn(4, gm.dim, generator=torch.Generator().manual_seed(3))
    sig_k = karras(8, 0.05, 10.0)
    sig_vp = vp_discrete(ab, 8, spacing="linspace").sigmas
    net = Network(gm.dim)
    for label, solver, opts in runs:
        for backend in ("cpp", "eager"):
            yield (f"{label}/plain/{backend}", lambda s=solver, o=opts, b=backend: fastint.sample(
                gm, x * 10.0, sig_k, s, seed=5, backend=b, **o))
        yield (f"{label}/plain/injected", lambda s=solver, o=opts: fastint.sample(
            gm, x * 10.0, sig_k, s, noise_sampler=_injected(x.shape, s), backend="cpp", **o))
        for kind in ("epsilon", "v_prediction", "sample"):
            for backend in ("cpp", "eager"):
                yield (f"{label}/vp_{kind}/{backend}", lambda s=solver, o=opts, k=kind, b=backend: fastint.sample(
                    DiscreteVPDenoiser(net, ab, prediction_type=k), x * float(sig_vp[0]), sig_vp, s, seed=7,
                    backend=b, **o))
        yield (f"{label}/vp_eps/injected", lambda s=solver, o=opts: fastint.sample(
            DiscreteVPDenoiser(net, ab), x * float(sig_vp[0]), sig_vp, s, backend="cpp",
            noise_sampler=_injected(x.shape, s + "vp"), **o))
        yield (f"{label}/vp_eps/callback", lambda s=solver, o=opts: fastint.sample(
            DiscreteVPDenoiser(net, ab), x * float(sig_vp[0]), sig_vp, s, seed=7, backend="cpp",
            callback=lambda d: None, **o))
        yield (f"{label}/flow/cpp", lambda s=solver, o=opts: fastint.sample(
            FlowDenoiser(net), x * 20.0, karras(6, 0.05, 20.0), s, seed=9, backend="cpp", **o))
        yield (f"{label}/ve/cpp", lambda s=solver, o=opts: fastint.sample(
            VEDenoiser(lambda u, t: gm(u, t)), x * 10.0, sig_k, s, seed=9, backend="cpp", **o))
        if not opts.get("guidance") and not opts.get("restart_list") and not opts.get("restart_info"):
            from fastint import k_diffusion
            fn = getattr(k_diffusion, "sample_" + solver)
            yield (f"{label}/k_diffusion", lambda f=fn, o=opts: f(gm, x * 10.0, sig_k, {"seed": 3}, disable=True,
                                                                    **o))


def main(argv):
    mode, path = argv[1], argv[2]
    torch.set_num_threads(1)
    results = {}
    for name, fn in cases():
        with torch.no_grad():
            results[name] = fn()
    if mode == "save":
        torch.save(results, path)
        print(f"saved {len(results)} results to {path}")
        return 0
    saved = torch.load(path)
    bad = []
    for name, got in results.items():
        want = saved.get(name)
        if want is None:
            print(f"  {name}: not in the saved results")
        elif not torch.equal(got, want):
            bad.append(name)
            print(f"  {name}: differs, max |diff| {(got.double() - want.double()).abs().max().item():.3g} "
                  f"(max |value| {want.abs().max().item():.3g})")
    print(f"{len(results) - len(bad)} of {len(results)} cases bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
