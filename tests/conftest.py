"""Shared test fixtures.

The COSI team's files live in ``../shared/fixtures/cosipy`` beside the repository
(or wherever ``COSI_FIXTURES`` points). Tests that need them skip when they are
missing on a developer machine, but fail under CI (``CI=true``).
"""
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("COSI_FIXTURES", REPO.parent / "shared" / "fixtures" / "cosipy"))


@pytest.fixture(scope="session")
def fixtures_dir():
    """Directory of the COSI team's fixture files."""
    if not FIXTURES.is_dir():
        message = f"COSI fixture directory {FIXTURES} is missing"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    return FIXTURES


@pytest.fixture
def rng():
    """A seeded random generator: every statistical test is reproducible."""
    return np.random.default_rng(20261121)
