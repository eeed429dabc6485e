"""Sphinx configuration of the DeepExec documentation site.

Build: ``cd docs && pip install -r requirements-docs.txt && sphinx-build -b html . _build/html``
(CI: ``make docs``, warnings are errors; ``make docs-linkcheck``, internal links only).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import the packages from this checkout even where they are not installed.
for path in (ROOT / "generated", ROOT, ROOT / "docs" / "_ext"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import deepexec_sdk  # noqa: E402

project = "DeepExec"
author = "The DeepExec authors"
copyright = "2026, The DeepExec authors"
release = deepexec_sdk.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "deepexec_docs",  # _ext/deepexec_docs.py: docstring fix-ups at build time
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo"
html_title = f"DeepExec {release}"

myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

linkcheck_ignore = [r"^https?://"]
