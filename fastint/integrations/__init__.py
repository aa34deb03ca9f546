"""Integrations with other frameworks: ``fastint.integrations.diffusers`` (scheduler classes for diffusers
pipelines). The k-diffusion / ComfyUI drop-in samplers are ``fastint.k_diffusion``; distributed generation is
``fastint.distributed``. Nothing here is imported by ``import fastint``: each module imports its framework lazily."""
