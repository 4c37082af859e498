"""Helpers for tests that start a dpaudit process and stop it with a signal."""

from __future__ import annotations

import signal


def sigint_as_default() -> None:
    """``preexec_fn`` of a child that a test interrupts with SIGINT: SIGINT's default disposition, so that Python
    installs its KeyboardInterrupt handler there. A process started in the background by a non-interactive shell
    (``pytest ... &``, some CI runners, ``nohup``) ignores SIGINT, and so would every child it starts: the test
    would then wait for the whole run instead of checking the interruption."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
