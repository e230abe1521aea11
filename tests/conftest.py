"""Shared test configuration.

Property tests must not flake in CI: every hypothesis test draws the same examples on every run
(derandomize), keeps no example database between runs, and has no per-example deadline (CI's
two cores are slow and shared). Tests that need other settings override them with @settings.
"""
from hypothesis import HealthCheck, settings

settings.register_profile(
    "book",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("book")


# Figures: a non-interactive backend for every test, and no figure left open between tests
# (the plot and widget builders create many).
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
