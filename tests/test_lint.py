"""ruff (errors only: undefined and unused names, syntax, likely bugs) over course_utils, the tests
and the solution notebooks, configured in pyproject.toml."""
import subprocess
import sys


def test_ruff_finds_no_errors(root):
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=root, capture_output=True, text=True)
    assert "No module named ruff" not in result.stderr, "ruff is missing: pip install -r requirements-dev.txt"
    assert result.returncode == 0, result.stdout + result.stderr
