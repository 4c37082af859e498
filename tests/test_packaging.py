"""The package layout: the user's folders install under the dpaudit namespace, and the pure core stays pure."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


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


def test_bounds_import_and_default_computation_stay_light() -> None:
    # `dpaudit bounds` latency. scipy.stats / scipy.signal / scipy.optimize each cost ~0.5-3 s of
    # imports; the package and the default (tight) computations need none of them, nor torch, matplotlib or the CLI.
    code = (
        "import sys, dpaudit.bounds as b\n"
        "b.rero_bound(1.0, 0.01, 100, 1e-3); b.rero_bound(1.0, 0.01, 100, 1e-3, threat_model='relaxed')\n"
        "b.epsilon_pld(1.0, 0.01, 100, 1e-5); b.mia_curve(1.0, 0.01, 100)\n"
        "heavy = ('scipy.stats', 'scipy.signal', 'scipy.optimize', 'scipy.integrate', 'scipy.interpolate', 'torch',\n"
        "         'matplotlib', 'typer', 'rich', 'opacus', 'dp_accounting')\n"
        "print(sorted(k for k in heavy if k in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stdout.strip() == "[]"


def test_command_line_start_up_loads_no_torch_or_scipy() -> None:
    # `dpaudit --help` and the start of every command: building the app (and the configurations behind its defaults)
    # must not load torch (about 1 s) or scipy (scipy.special alone 0.2 s); commands load what they need when they run.
    code = (
        "import sys\n"
        "from dpaudit.cli.main import app\n"
        "print(sorted(k for k in ('torch', 'scipy', 'matplotlib', 'reportlab', 'opacus', 'monai') if k in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stdout.strip() == "[]"


def test_every_command_is_found_where_the_entry_point_looks_for_it() -> None:
    # `dpaudit CMD` builds the app from COMMANDS[CMD] alone: every command of the whole app must be listed there,
    # with the module that defines it.
    import typer

    from dpaudit.cli import main

    click_app = typer.main.get_command(main.app)
    assert sorted(click_app.commands) == sorted(main.COMMANDS)  # type: ignore[attr-defined]
    for command, module in main.COMMANDS.items():
        alone = typer.main.get_command(main.build_app([module]))
        assert command in alone.commands, (command, module)  # type: ignore[attr-defined]


def test_one_command_loads_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['dpaudit', 'bounds', '--sigma', '1', '--q', '0.01', '--steps', '10', '--kappa', '0.01', '--json']\n"
        "from dpaudit.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(k for k in sys.modules if k.startswith('dpaudit.cli.') and k.endswith('_cmd')), file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stderr.strip().splitlines()[-1] == "['dpaudit.cli.bounds_cmd']"


def test_console_script_version() -> None:
    from typer.testing import CliRunner

    from dpaudit import __version__
    from dpaudit.cli.main import app

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output


#: Which dpaudit packages each package may import (its own included). Layers read top-down: the core knows no
#: other package, the bounds only the core, the attacks the bounds, the audits everything but the command line.
ALLOWED = {
    "core": {"dpaudit"},
    "bounds": {"dpaudit", "dpaudit.bounds"},
    "attacks": {"dpaudit", "dpaudit.bounds", "dpaudit.attacks"},
    "audit": {"dpaudit", "dpaudit.bounds", "dpaudit.attacks", "dpaudit.audit"},
    "cli": {"dpaudit", "dpaudit.bounds", "dpaudit.attacks", "dpaudit.audit", "dpaudit.cli"},
}
#: ``python -m dpaudit`` runs the command line: the one arrow up, by design.
ENTRY_POINTS = {"core/__main__.py"}
SUBPACKAGES = ("dpaudit.bounds", "dpaudit.attacks", "dpaudit.audit", "dpaudit.cli")


def _dpaudit_imports(path: Path) -> set[str]:
    """Every dpaudit package a module imports, at module level or lazily inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    packages = set()
    for name in names:
        if name == "dpaudit" or name.startswith("dpaudit."):
            packages.add(next((p for p in SUBPACKAGES if name == p or name.startswith(p + ".")), "dpaudit"))
    return packages


def test_layers_import_only_downwards() -> None:
    root = Path(__file__).resolve().parent.parent
    wrong = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ENTRY_POINTS:
                continue
            wrong += [f"{rel} imports {p}" for p in sorted(_dpaudit_imports(path) - allowed)]
    assert not wrong, wrong


def test_attacks_and_bounds_import_no_audit_or_cli_when_loaded() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        "for pkg in ('dpaudit.bounds', 'dpaudit.attacks'):\n"
        "    p = importlib.import_module(pkg)\n"
        "    for m in pkgutil.iter_modules(p.__path__): importlib.import_module(pkg + '.' + m.name)\n"
        "print(sorted(k for k in sys.modules if k.startswith(('dpaudit.audit', 'dpaudit.cli', 'typer', 'reportlab'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert res.stdout.strip() == "[]"


def _cli_params(group: str | None, command: str) -> dict[str, object]:
    import typer

    from dpaudit.cli.main import app

    click_app = typer.main.get_command(app)
    cmd = click_app.commands[group].commands[command] if group else click_app.commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


def _configs() -> dict[str, type]:
    from dpaudit.attacks.federated_results import FederatedAttackConfig
    from dpaudit.attacks.scenario import AttackScenario
    from dpaudit.audit.configs import CanaryAuditConfig, TrainConfig
    from dpaudit.audit.federated.fedavg import FederatedConfig
    from dpaudit.audit.profile.schema import ProfileConfig

    return {c.__name__: c for c in (TrainConfig, CanaryAuditConfig, ProfileConfig, FederatedConfig,
                                    FederatedAttackConfig, AttackScenario)}


#: Each command that runs a use case, and the configuration dataclasses its options set (the first wins).
COMMANDS = [(None, "train", ("TrainConfig",)), ("mia", "audit", ("CanaryAuditConfig", "TrainConfig")),
            (None, "profile", ("ProfileConfig",)), ("federated", "train", ("FederatedConfig",)),
            ("federated", "attack", ("FederatedAttackConfig",)), (None, "attack", ("AttackScenario", "TrainConfig"))]


def _plain(value: object) -> object:
    """A CLI default as the configuration holds it (Enum choices are their strings)."""
    import enum

    return value.value if isinstance(value, enum.Enum) else value


@pytest.mark.parametrize(("group", "command", "configs"), COMMANDS)
def test_options_default_to_the_configuration(group, command, configs) -> None:
    """Every option named after a configuration field defaults to that field's default: one set of defaults for
    the Python API and the command line (``--image-size`` None everywhere: the dataset's default)."""
    import dataclasses

    classes = _configs()
    params = _cli_params(group, command)
    checked = []
    for name, param in params.items():
        if name == "arch_args" or (command == "attack" and name == "arch"):
            continue  # no --arch-args: the empty mapping; attack --arch: the checkpoint's (its help says so)
        for config in configs:
            field = next((f for f in dataclasses.fields(classes[config]) if f.name == name), None)
            if field is None or field.default is dataclasses.MISSING:
                continue
            if isinstance(field.default, tuple):
                continue  # a list option (--epsilons 1,8,20,1e9): checked below for the profile
            assert _plain(param.default) == field.default, (command, name, param.default, field.default)
            checked.append(name)
            break
    assert "seed" in checked and ("dataset" in checked or command == "attack"), checked
    if "image_size" in params:
        assert params["image_size"].default is None and "28 for the built-in demos" in params["image_size"].help


def test_profile_list_options_default_to_the_configuration() -> None:
    from dpaudit.attacks.decoders import decoders_for
    from dpaudit.audit.profile.schema import ProfileConfig, cli_number

    params, d = _cli_params(None, "profile"), ProfileConfig()
    # --epsilons: None in both, the task's list (dpaudit.config.PROFILE_DEFAULTS), which --help states per task
    assert params["epsilons"].default is None is ProfileConfig.__dataclass_fields__["epsilons"].default
    assert ",".join(cli_number(e) for e in d.epsilons) + " (classification)" in params["epsilons"].help
    assert decoders_for(_plain(params["decoder"].default)) == d.decoders == decoders_for("all")
    assert params["inits"].default == ",".join(d.inits)


def test_shared_options_mean_the_same_on_every_command() -> None:
    """An option shared by several commands has one type and one help text everywhere (cli/_common.py), except
    where a command documents its own default (``attack --image-size``: the checkpoint's)."""
    seen: dict[str, tuple[str, object, str]] = {}
    for group, command, _ in COMMANDS:
        for name, param in _cli_params(group, command).items():
            if name in ("seed", "epochs", "batch_size", "max_grad_norm", "lr", "threads", "json", "json_output",
                        "as_json", "out_dir", "delta", "sigma", "epsilon", "non_private", "bins", "clients",
                        "rounds", "max_images", "image_size", "arch", "selection", "seeds", "epsilons", "sigmas"):
                continue  # command-specific wording or meaning (e.g. clients per round vs sites)
            key = (param.help, param.metavar)
            if name in seen:
                assert seen[name][1:] == key, (name, seen[name][0], command)
            else:
                seen[name] = (command, *key)
    assert {"dataset", "window", "decoder", "connection", "denoiser"} <= set(seen)


def test_the_command_line_imports_no_private_names_of_other_packages() -> None:
    root = Path(__file__).resolve().parent.parent
    wrong = []
    for path in sorted((root / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("dpaudit.cli"):
                wrong += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                          and not a.name.startswith("__")]
                wrong += [f"{path.name}: {node.module}" for part in node.module.split(".") if part.startswith("_")
                          and not part.startswith("__")]
    assert not wrong, wrong


def _run_main(argv: list[str], report: str, env: dict[str, str] | None = None) -> str:
    """Run ``dpaudit ARGV`` in a fresh interpreter through the console script's ``main`` and return what ``report``
    (Python code run after it) prints."""
    code = (
        "import sys, os, io, contextlib\n"
        f"sys.argv = ['dpaudit', *{argv!r}]\n"
        "from dpaudit.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"{report}\n"
    )
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | (env or {})
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True,
                         env=full_env)
    return res.stdout.strip()


@pytest.mark.parametrize("argv", [
    ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--json"],
    ["bounds", "--sigma", "1", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--threat-model", "relaxed"],
    ["calibrate", "--max-rero", "0.2", "--q", "0.01", "--steps", "100", "--kappa", "1e-3", "--json"],
])
def test_a_bounds_command_loads_no_torch_heavy_scipy_pydantic_or_attack_code(argv: list[str]) -> None:
    # `dpaudit bounds` latency (bench/bench_bounds.py --sections cli): the whole process, parsing included, loads
    # numpy, scipy.special, typer and rich, and none of these (pydantic: typer 0.29's option coercion; scipy.stats,
    # .signal, .optimize: 0.5-3 s each).
    heavy = ("torch", "matplotlib", "scipy.stats", "scipy.signal", "scipy.optimize", "scipy.integrate", "pydantic", "dpaudit.attacks", "dpaudit.audit", "opacus", "reportlab",
             "monai", "skimage", "dp_accounting")
    report = (f"heavy = {heavy!r}\n"
              "print(sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + '.')}))")
    loaded = ast.literal_eval(_run_main(argv, report))
    import typer

    if tuple(int(x) for x in typer.__version__.split(".")[:2]) >= (0, 29):
        assert loaded in ([], ["pydantic"]), loaded
        pytest.skip(f"typer {typer.__version__} is installed, above pyproject's typer<0.29, and loads pydantic "
                    "(0.13 s per start); `pip install -e .` installs the pinned one")
    assert loaded == []


def test_commands_without_linear_algebra_start_openblas_with_one_thread_unless_the_user_chose() -> None:
    report = "print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    bounds = ["bounds", "--sigma", "1", "--q", "1", "--steps", "1", "--kappa", "0.5", "--json"]
    assert _run_main(bounds, report) == "1"
    assert _run_main(bounds, report, {"OPENBLAS_NUM_THREADS": "3"}) == "3"  # never overridden
    assert _run_main(["mia", "bound", "--help"], report) == "1"
    assert _run_main(["train", "--help"], report) == "None"  # training keeps OpenBLAS' default
    assert _run_main(["mia", "audit", "--help"], report) == "None"


def test_every_choice_type_of_the_command_line_pickles() -> None:
    # A command hands its options to worker processes (the profile's tasks): an Enum choice is pickled by
    # reference to the module that binds it, so it must name that module.
    import enum
    import importlib
    import pickle
    import pkgutil

    import dpaudit.cli

    found = 0
    for info in pkgutil.iter_modules(dpaudit.cli.__path__):
        module = importlib.import_module(f"dpaudit.cli.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__.startswith("dpaudit"):
                member = next(iter(value))
                assert pickle.loads(pickle.dumps(member)) is member, (module.__name__, value)
                found += 1
    assert found >= 8
