"""The Sphinx documentation builds without warnings, covers the API, and its example runs."""
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import proxopt

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """Build the HTML docs once, warnings as errors, into a temporary directory."""
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("docs_html")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"sphinx-build failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return out


def test_build_is_warning_free(html):
    assert (html / "index.html").is_file()
    for page in ("getting_started", "methods", "theory", "checkpoints", "export", "reliability", "api/index"):
        assert (html / f"{page}.html").is_file(), page


def test_every_public_object_is_documented(html):
    ids = set()
    for page in (html / "api").glob("*.html"):
        ids.update(re.findall(r'id="(proxopt\.[\w.]+)"', page.read_text(encoding="utf-8")))
    missing = []
    for name in proxopt.__all__:
        obj = getattr(proxopt, name)
        if not callable(obj):  # submodules and __version__
            continue
        own = f"{obj.__module__}.{obj.__qualname__}"
        if f"proxopt.{name}" not in ids and own not in ids:
            missing.append(name)
    assert not missing, f"public names without an API entry in docs/api/: {missing}"
    for module in ("quantizers", "mirror_maps", "levels", "groups", "summary", "export", "distributed", "native"):
        assert f"module-proxopt.{module}" in (html / "api" / f"{module}.html").read_text(encoding="utf-8")


def test_every_preset_is_in_the_methods_table():
    text = (DOCS / "methods.rst").read_text(encoding="utf-8")
    rows = set(re.findall(r"^   \* - ``([^`]+)``", text, flags=re.M))
    assert rows == set(proxopt.available())


def _named_block(rst: str, name: str) -> str:
    """The body of the ``.. code-block:: python`` with ``:name: <name>``, dedented."""
    lines = rst.splitlines()
    start = lines.index(f"   :name: {name}") + 1
    body = []
    for line in lines[start:]:
        if line and not line.startswith("   "):
            break
        body.append(line[3:])
    return "\n".join(body).strip("\n") + "\n"


def test_getting_started_example_runs():
    code = _named_block((DOCS / "getting_started.rst").read_text(encoding="utf-8"), "example-complete")
    assert "opt.finalize()" in code and "AnnealScheduler" in code
    namespace = {"__name__": "docs_example"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only spin on a shared machine
    try:
        exec(compile(code, "getting_started.rst:example-complete", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    model, y = namespace["model"], namespace["y"]
    assert set(model[0].weight.unique().tolist()) == {-1.0, 1.0}
    majority = max((y == 0).float().mean().item(), (y == 1).float().mean().item())
    assert namespace["hard"] > majority  # the binarized network learned something
