"""Shared fixtures and helpers for the annforge test-suite."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def brute_force(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distance matrix [nq, n] with annforge's conventions (smaller is closer)."""
    x64 = x.astype(np.float64)
    q64 = np.atleast_2d(q).astype(np.float64)
    if metric == "l2":
        return ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        x64 = x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-300)
        q64 = q64 / np.maximum(np.linalg.norm(q64, axis=1, keepdims=True), 1e-300)
    return 1.0 - q64 @ x64.T


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 16) -> np.ndarray:
    """Clustered Gaussian data (embedding-like neighbourhoods)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str) -> ModuleType:
    """bench/<name>.py imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
