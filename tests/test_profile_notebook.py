"""The walk-through notebook runs end to end (tiny settings, about 20 s) and reproduces the profile's report."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "audit_walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DPAUDIT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DPAUDIT_NOTEBOOK_OUT", str(tmp_path / "nb"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "worst case" in outputs and "identical to the profile's own report: True" in outputs
    assert (tmp_path / "nb" / "profile.json").is_file()
