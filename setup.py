"""Build script: the package is declared in pyproject.toml; the compiled fused-step extension is added here."""

from setuptools import setup

setup()
