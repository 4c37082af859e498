"""Values are checked before any work: a noise multiplier below the accountants' floor is refused by every command
that takes one before data are loaded or a DP-SGD step runs (``mia self-audit --sigma 1e-9`` ran its 4000 Opacus
steps and then refused the value).

The commands and their noise options are discovered from the app; every entry point of work (data loading, the
self-audit's Opacus steps, training) is replaced by a stub that fails at once, naming itself, so that a value the
command lets through to the work shows as the stub's message rather than as a long run.
"""

from __future__ import annotations

import pytest
import typer
from test_cli_fixes import _required_args, _stub_data, leaf_commands
from typer.testing import CliRunner

from dpaudit.cli.main import app
from dpaudit.config import MIN_NOISE_MULTIPLIER
from dpaudit.errors import ConfigError, DataError

runner = CliRunner()
STUB = "stub: data loading reached"
NOISE_FLAGS = ("--sigma", "--sigmas")
#: The attacks replay their --sigmas as they are, with no accountant (0 is the attack without noise): any sigma >= 0
#: is theirs to take, so the accountants' floor does not apply.
REPLAYED = {("attack",), ("federated", "attack")}

NOISE_OPTIONS = [pytest.param(path, flag, id=f"{' '.join(path)} {flag}")
                 for path, cmd in leaf_commands(typer.main.get_command(app)) if path not in REPLAYED
                 for p in cmd.params for flag in getattr(p, "opts", ()) if flag in NOISE_FLAGS]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data loading and the work of the commands that load no data fail at once if reached."""
    _stub_data(monkeypatch)
    import dpaudit.audit.selfaudit as selfaudit
    import dpaudit.audit.train as train

    def stub(*args: object, **kwargs: object) -> None:
        raise DataError(STUB)

    monkeypatch.setattr(selfaudit, "gradient_canary_projections", stub)
    monkeypatch.setattr(train, "train", stub)


def test_every_noise_option_is_under_test() -> None:
    assert {p.values[0] for p in NOISE_OPTIONS} >= {("mia", "self-audit"), ("train",), ("bounds",)}


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize(("path", "flag"), NOISE_OPTIONS)
@pytest.mark.parametrize("value", ["1e-09", f"{MIN_NOISE_MULTIPLIER / 2:g}"])
def test_a_noise_multiplier_below_the_floor_is_refused_before_any_work(path: tuple[str, ...], flag: str,
                                                                       value: str) -> None:
    cmd = dict(leaf_commands(typer.main.get_command(app)))[path]
    result = runner.invoke(app, [*path, *_required_args(cmd), flag, value])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert STUB not in text
    assert "running" not in text  # no progress line: nothing started
    assert f"at least {MIN_NOISE_MULTIPLIER:g}" in text and f"got {value}" in text, text


def test_the_self_audit_configuration_refuses_what_its_accountant_refuses() -> None:
    from dpaudit.audit.selfaudit import SelfAuditConfig

    with pytest.raises(ConfigError, match="noise_multiplier"):
        SelfAuditConfig(noise_multiplier=1e-9)
    assert SelfAuditConfig(noise_multiplier=MIN_NOISE_MULTIPLIER).noise_multiplier == MIN_NOISE_MULTIPLIER
