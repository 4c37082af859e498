"""`dpaudit profile` (the full audit: train, bound, attack, report) and `dpaudit report` (re-render the PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from dpaudit.cli._common import emit_json, err, handle_errors, out


@handle_errors
def report(
    profile_json: Annotated[Path, typer.Argument(help="profile.json written by `dpaudit profile --out DIR` "
                                                      "(or the folder DIR).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the PDF.")] = Path("report.pdf"),
    include_images: Annotated[bool | None, typer.Option(
        "--include-images/--no-images",
        help="Show stored reconstructions next to training images (patient data!). Default: as profiled.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Re-render the PDF risk report from a profile.json (deterministic: the same file gives the same PDF)."""
    from dpaudit.audit.report import load_profile, render_report

    path = profile_json / "profile.json" if profile_json.is_dir() else profile_json
    prof = load_profile(path)
    pdf = render_report(prof, output, include_images=include_images, base_dir=path.parent)
    images = prof.config.include_images if include_images is None else include_images
    if images:
        err.print("[yellow]warning:[/] the report shows training images (possibly patient data); do not share it "
                  "beyond those authorised to see the data.", markup=True)
    if as_json:
        emit_json({"pdf": str(pdf), "profile": str(path), "include_images": images})
    else:
        out.print(f"wrote {pdf}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("report")(report)
