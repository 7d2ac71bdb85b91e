"""Sphinx configuration for the proxopt documentation.

Build with ``python -m sphinx -W --keep-going -b html docs <outdir>``; only
Sphinx's built-in extensions and the default alabaster theme are used.
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import proxopt  # noqa: E402  (after the path tweak, so an uninstalled checkout builds)

project = "proxopt"
author = "proxopt contributors"
copyright = "proxopt contributors, MIT license"
version = proxopt.__version__
release = proxopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "*.md"]
templates_path = []
language = "en"

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, so attributes are not described twice

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show "torch.optim.Adam", not "<class ...>"
python_maximum_signature_line_length = 100
autodoc_default_options = {"show-inheritance": True}
add_module_names = False

html_theme = "alabaster"
html_title = f"proxopt {release}"
html_static_path = []
html_theme_options = {
    "description": "Neural-network quantization as a PyTorch optimizer",
    "fixed_sidebar": True,
}
