"""Capture tests run in float64; x64 is switched on per test and restored afterwards."""

import jax
import pytest


@pytest.fixture(autouse=True)
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)
