"""The code passes the project's linter (ruff, configured in pyproject.toml)."""

import subprocess
import sys

from .conftest import REPO_ROOT


def test_ruff_finds_nothing():
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "servicedesk_etl", "servicedesk_etl_tests", "benchmarks"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
