"""Where the shipped resources are: ``configs/`` and ``prompts/`` of a checkout, or their copies in an installed wheel.

The one place that locates them; everything else uses ``CONFIGS_DIR`` and ``PROMPTS_DIR``.

* A checkout (also an editable install, ``pip install -e .``) reads them at the repository root, ``REPO_ROOT``.
* A wheel (``pip install .``) does not install them as top-level ``configs``/``prompts`` folders of site-packages
  (generic names other distributions use too); setup.py's build step copies them into this package as
  ``utils/_resources/configs`` and ``utils/_resources/prompts``. When that copy is present it wins: it is the one
  built together with this code.

``REPO_ROOT`` is the folder above the ``utils`` package: the repository in a checkout (tests, bench, tools and
relative model paths use it), site-packages in an installed wheel.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
BUNDLED_RESOURCES = PACKAGE_DIR / "_resources"   # written by setup.py's build_py, absent in a checkout
INSTALLED = (BUNDLED_RESOURCES / "configs").is_dir()
RESOURCES_DIR = BUNDLED_RESOURCES if INSTALLED else REPO_ROOT
CONFIGS_DIR = RESOURCES_DIR / "configs"
PROMPTS_DIR = RESOURCES_DIR / "prompts"
