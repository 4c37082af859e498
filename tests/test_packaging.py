"""The package layout: the user's folders install under the dpaudit namespace, and the pure core stays pure."""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def test_subpackages_live_under_dpaudit() -> None:
    for name in ["dpaudit", "dpaudit.bounds", "dpaudit.attacks", "dpaudit.audit", "dpaudit.cli"]:
        assert importlib.util.find_spec(name) is not None, name


def test_no_top_level_bounds_or_cli_package_installed() -> None:
    # Run from a neutral directory so the checkout's own folders are not on sys.path.
    code = "import importlib.util as u; print([n for n in ['bounds','cli','attacks','audit','core'] if u.find_spec(n)])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stdout.strip() == "[]"


def test_bounds_imports_no_torch_matplotlib_or_typer() -> None:
    code = (
        "import sys, dpaudit.bounds, importlib, pkgutil\n"
        "for m in pkgutil.iter_modules(dpaudit.bounds.__path__): importlib.import_module('dpaudit.bounds.' + m.name)\n"
        "print(sorted(k for k in ('torch', 'matplotlib', 'typer', 'opacus') if k in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stdout.strip() == "[]"


def test_console_script_version() -> None:
    from typer.testing import CliRunner

    from dpaudit import __version__
    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output
