"""The demo row of k-diffusion's DPM-Solver-fast (``fastint.k_diffusion.sample_dpm_fast``): not a general solver
(its grid and orders come from the NFE budget n, uniform in lambda from sigma_max to sigma_min), so it is registered
here with ``nfe(n) = n``. Its result is the state at sigma_min, as k-diffusion's (no final denoising step).
``sample_dpm_adaptive`` has no row: its NFE follows its error control, not a budget."""

from fastint.k_diffusion import sample_dpm_fast

from . import demo as _demo


def _dpm_fast_run(setup, model, x, nfe):
    return sample_dpm_fast(model, x, setup.sigma_min, setup.sigma_max, nfe, disable=True, seed=setup.seed,
                           backend=setup.backend)


def register() -> None:
    """Add the dpm_fast row to the demo (``demo.register_entry``)."""
    _demo.register_entry(_demo.DemoEntry(
        "dpm_fast", lambda nfe: nfe, _dpm_fast_run, description="DPM-Solver-fast (k-diffusion), orders 3, .., 3, 2/1",
        min_steps=1))
