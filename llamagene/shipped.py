"""Where llamagene finds the data folders it ships: prompt templates, pipelines, data recipes.

The folders ``prompt_templates/``, ``pipelines/`` (``demo/``, ``deepspeed/``, ``cluster/``) and
``data_recipes/`` are data the program reads at run time. They live in one of two layouts:

* **A source checkout** (``git clone`` then ``pip install -e .``, what the README and CI use).
  The folders sit at the top of the repository, beside the package, and edits to them take
  effect at once::

      <repo>/pyproject.toml
      <repo>/llamagene/shipped.py        (this module)
      <repo>/prompt_templates/
      <repo>/pipelines/
      <repo>/data_recipes/

* **An installed wheel** (``pip install .``, or from an index). ``pyproject.toml`` maps the same
  folders into the package as package data, keeping them siblings so the relative paths between
  them (``../../data_recipes/sft_demo.yaml`` in the demo pipeline) still resolve::

      site-packages/llamagene/_shipped/prompt_templates/
      site-packages/llamagene/_shipped/pipelines/
      site-packages/llamagene/_shipped/data_recipes/

:func:`shipped_dir` prefers the checkout (a ``pyproject.toml`` beside the package marks one, so
an unrelated top-level ``pipelines`` package in site-packages is never mistaken for ours), then
the installed copy, and otherwise raises :class:`~llamagene.errors.LlamageneError`. Only the
standard library is imported here: the CLI calls this before any heavy import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from llamagene.errors import LlamageneError

ShippedName = Literal["prompt_templates", "pipelines", "data_recipes"]
#: Every folder llamagene ships, in a fixed order.
SHIPPED_NAMES: tuple[ShippedName, ...] = get_args(ShippedName)

_PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository root when this module runs from a source checkout.
_CHECKOUT_ROOT = _PACKAGE_DIR.parent
#: Where a wheel install puts the folders (``pyproject.toml``: ``llamagene._shipped.<name>``).
_INSTALLED_ROOT = _PACKAGE_DIR / "_shipped"


def _checkout_marker() -> bool:
    return (_CHECKOUT_ROOT / "pyproject.toml").is_file()


def is_checkout() -> bool:
    """True when running from a source checkout: the three folders sit beside the package."""
    return _checkout_marker() and all((_CHECKOUT_ROOT / n).is_dir() for n in SHIPPED_NAMES)


def shipped_dir(name: ShippedName) -> Path:
    """The folder ``name`` (an absolute path): the checkout's, else the installed copy.

    Raises :class:`LlamageneError` (one line: where it looked, how to fix it) when neither exists.
    """
    if name not in SHIPPED_NAMES:
        raise ValueError(f"unknown shipped folder {name!r}; expected one of {SHIPPED_NAMES}")
    checkout = _CHECKOUT_ROOT / name
    if _checkout_marker() and checkout.is_dir():
        return checkout
    installed = _INSTALLED_ROOT / name
    if installed.is_dir():
        return installed
    raise LlamageneError(
        f"llamagene's {name}/ folder is missing: not in a source checkout ({checkout}) nor in "
        f"the installed package ({installed}); reinstall llamagene from its wheel or source "
        "folder, or clone the repository and run `pip install -e .` there, or give the path of "
        f"your own {name}/ folder explicitly"
    )
