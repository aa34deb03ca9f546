"""Classifier guidance for the guided solvers (``plms``, ``lie_trotter``, ``strang``).

A guidance function is ``guidance(x, sigma_batch) -> grad_x log p(y | x, sigma)``: the gradient, in VE coordinates
(x = x0 + sigma eps, the state fastint samples), of the classifier's log-probability of the wanted labels, shaped
like x. ``classifier_guidance`` builds it from a classifier by autograd; ``mixture_class_guidance`` is the analytic
one for a ``GaussianMixture`` whose classes are its components (``p(y = c | x) = p(c | x)``, the component
posterior), so that the guided target ``p(x | y = c)`` is known exactly.

For a VP classifier ``f(x_vp, t)``: ``x_vp = alpha x``, so ``grad_x log p = alpha grad_{x_vp} log p``. Wrap it as
``classifier(x, sigma) = f(x / sqrt(1 + sigma^2), t(sigma))`` and autograd does the chain rule.
"""

from typing import Callable

import torch


def _labels(labels, batch: int, device) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError("labels must be integers (one class index per sample)")
    if labels.dim() == 0:
        labels = labels.expand(batch)
    if labels.shape != (batch,):
        raise ValueError(f"labels must be one class index per sample: got shape {tuple(labels.shape)} for a batch "
                         f"of {batch}")
    return labels.to(device=device, dtype=torch.int64)


def classifier_guidance(classifier: Callable, labels) -> Callable:
    """``guidance(x, sigma) = grad_x sum_b log_softmax(classifier(x, sigma))[b, labels[b]]`` by autograd.

    ``classifier(x, sigma_batch) -> logits (batch, classes)``. ``labels``: an int, or one int per sample."""
    if not callable(classifier):
        raise TypeError("classifier must be callable as classifier(x, sigma_batch) -> logits (batch, classes)")

    def guidance(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        y = _labels(labels, x.shape[0], x.device)
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            logits = classifier(xi, sigma)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier returned {getattr(logits, 'shape', type(logits))}; expected "
                                 f"logits of shape (batch={x.shape[0]}, classes)")
            log_p = torch.log_softmax(logits, dim=-1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xi)
        return grad.detach()

    return guidance


def mixture_class_guidance(mixture, labels) -> Callable:
    """The exact ``grad_x log p(c | x, sigma)`` of a ``GaussianMixture``'s component posterior:

        grad log p(c | x) = g_c(x) - sum_k p(k | x) g_k(x),   g_k(x) = -(x - mu_k) / (s_k^2 + sigma^2).
    """

    def guidance(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], mixture.dim)
        y = _labels(labels, x.shape[0], x.device)
        mu = mixture.means.to(x.device, x.dtype)
        s = mixture.scales.to(x.device, x.dtype)
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        g = -(flat[:, None, :] - mu[None]) / (s[None] ** 2 + sig ** 2)          # (batch, C, dim)
        post = mixture.component_log_posterior(x, sigma).exp()                   # (batch, C)
        own = g.gather(1, y[:, None, None].expand(-1, 1, mixture.dim))[:, 0]
        return (own - (post[:, :, None] * g).sum(1)).reshape(x.shape)

    return guidance
