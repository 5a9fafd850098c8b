"""Names the Keras backend in every test id: `test_budget[jax-sgd]`.

The backend is fixed when keras is imported, so each backend runs in its own
pytest process (`python tests/run_all.py` runs all three).
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def keras_backend():
    return BACKEND


def pytest_generate_tests(metafunc):
    if "keras_backend" in metafunc.fixturenames:
        metafunc.parametrize("keras_backend", [BACKEND], ids=[BACKEND])


def pytest_report_header(config):
    return f"keras backend: {BACKEND}"


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=256)
    return x, y
