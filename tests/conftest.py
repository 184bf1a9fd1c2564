"""Shared test fixtures.

The COSI team's files live in ``../shared/fixtures/cosipy`` beside the repository
(or wherever ``COSI_FIXTURES`` points). Tests that need them skip when they are
missing on a developer machine, but fail under CI (``CI=true``).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


@pytest.fixture(scope="session")
def cosi_imaging():
    """The ``cosi-imaging`` command of the running interpreter's environment, as a user runs it."""
    script = Path(sys.executable).parent / "cosi-imaging"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cosi_imaging_plugin.cli"]


@pytest.fixture(scope="session")
def cli_dataset(tmp_path_factory, cosi_imaging):
    """A tiny spacecraft-frame dataset made once by ``cosi-imaging simulate`` in a subprocess.

    Returns the folder with its manifest; the simulation's own checks are in test_cli_runs.
    """
    from test_simulate import tiny_config

    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(galactic=False)))
    out = root / "tiny"
    run = subprocess.run([*cosi_imaging, "simulate", str(config), "-o", str(out), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return out
