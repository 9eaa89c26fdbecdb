"""The layering of DESIGN.md §3, checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layers_are_respected():
    # import-linter is a dev dependency: without it the contracts would go unchecked, so its
    # absence is a failure of the test environment, not a reason to skip
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, (
        f"import-linter is not installed next to {sys.executable}; install the dev extras "
        "(it provides lint-imports, which checks the layer contracts)"
    )
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    # both contracts of pyproject.toml were found and checked
    summary = re.search(r"Contracts: (\d+) kept, (\d+) broken", out.stdout)
    assert summary and int(summary[1]) >= 2 and summary[2] == "0", out.stdout[-3000:]
