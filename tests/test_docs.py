"""The generated API reference (docs/api.md) matches the docstrings of the installed code."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "api_reference.py")


@pytest.mark.skipif(not os.path.exists(TOOL), reason="needs the source tree (tools/)")
def test_api_reference_is_current():
    result = subprocess.run([sys.executable, TOOL, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
