"""The README's test command is the one CI runs."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    cmd = ci[ci.index("# README-TEST-COMMAND") + 1].strip()
    assert cmd.endswith("python -m pytest")
    assert cmd in (ROOT / "README.md").read_text()
