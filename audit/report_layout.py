"""Layout primitives of the PDF report: page geometry, fonts (DejaVu, embedded), colours, paragraph styles, and
the table, box and figure helpers every page uses. Only ``report*.py`` modules import reportlab.
"""

from __future__ import annotations

import io
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, Image, Table, TableStyle
from reportlab.platypus.doctemplate import NotAtTopPageBreak

from dpaudit.audit import report_figures as figs

FONT = "DejaVuSans"
FONT_BOLD = "DejaVuSans-Bold"
FONT_ITALIC = "DejaVuSans-Oblique"
FONT_MONO = "DejaVuSansMono"
PAGE_W, PAGE_H = A4
MARGIN = 1.8 * cm
TEXT_W = PAGE_W - 2 * MARGIN

#: Every table sets its font, else reportlab falls back to (un-embedded) Helvetica.
FONT_CMD = ("FONTNAME", (0, 0), (-1, -1), FONT)
INK = colors.HexColor("#1a1a1a")
MUTED = colors.HexColor("#555555")
RULE = colors.HexColor("#bbbbbb")
HEAD_BG = colors.HexColor("#ece7f3")
WARN_BG = colors.HexColor("#fde0dd")
NOTE_BG = colors.HexColor("#f2f2f2")


def page_break() -> Flowable:
    """The one page break of the report: to the next page unless the frame is already at the top of one. Sections
    end with a break and some begin with one (the federated page, the appendices), and a section that fills its
    last page to the bottom moves on by itself: a plain ``PageBreak`` there would leave a blank page."""
    return NotAtTopPageBreak()


def register_fonts() -> None:
    """Register matplotlib's DejaVu TTFs with reportlab once (TrueType fonts are always embedded as subsets)."""
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    import matplotlib
    from reportlab.lib.fonts import addMapping

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name, file in ((FONT, "DejaVuSans.ttf"), (FONT_BOLD, "DejaVuSans-Bold.ttf"),
                       (FONT_ITALIC, "DejaVuSans-Oblique.ttf"), ("DejaVuSans-BoldOblique", "DejaVuSans-BoldOblique.ttf"),
                       (FONT_MONO, "DejaVuSansMono.ttf")):
        pdfmetrics.registerFont(TTFont(name, str(ttf / file)))
    addMapping(FONT, 0, 0, FONT)
    addMapping(FONT, 1, 0, FONT_BOLD)
    addMapping(FONT, 0, 1, FONT_ITALIC)
    addMapping(FONT, 1, 1, "DejaVuSans-BoldOblique")


def styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=FONT, fontSize=9.2, leading=12.6, textColor=INK, spaceAfter=5)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7.6, leading=10, textColor=MUTED, spaceAfter=3),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7.8, leading=9.6, spaceAfter=0),
        "cellc": ParagraphStyle("cellc", parent=base, fontSize=7.8, leading=9.6, spaceAfter=0, alignment=TA_CENTER),
        "head": ParagraphStyle("head", parent=base, fontName=FONT_BOLD, fontSize=7.6, leading=9.4, spaceAfter=0,
                               alignment=TA_CENTER),
        "h1": ParagraphStyle("h1", parent=base, fontName=FONT_BOLD, fontSize=15, leading=19, spaceBefore=2,
                             spaceAfter=8, keepWithNext=1),
        "h2": ParagraphStyle("h2", parent=base, fontName=FONT_BOLD, fontSize=11, leading=14, spaceBefore=8,
                             spaceAfter=4, keepWithNext=1),  # a heading never ends a page
        "title": ParagraphStyle("title", parent=base, fontName=FONT_BOLD, fontSize=26, leading=32, spaceAfter=10),
        "subtitle": ParagraphStyle("subtitle", parent=base, fontSize=13, leading=17, textColor=MUTED,
                                   spaceAfter=24),
        "mono": ParagraphStyle("mono", parent=base, fontName=FONT_MONO, fontSize=7.4, leading=9.4),
        "bullet": ParagraphStyle("bullet", parent=base, leftIndent=12, bulletIndent=2),
        "level": ParagraphStyle("level", parent=base, leftIndent=0, spaceAfter=7),
    }


def esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def boxed(flowables: list, background: colors.Color, border: colors.Color = RULE) -> Table:
    t = Table([[flowables]], colWidths=[TEXT_W])
    t.setStyle(TableStyle([FONT_CMD,
        ("BACKGROUND", (0, 0), (-1, -1), background),
        ("BOX", (0, 0), (-1, -1), 0.6, border),
        ("LEFTPADDING", (0, 0), (-1, -1), 8), ("RIGHTPADDING", (0, 0), (-1, -1), 8),
        ("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
    ]))
    return t


#: A table split across pages keeps at least this many body rows on each side, its footnote not counted (it
#: goes with the last ones), so no page holds a header and a few lonely rows, or a table's last rows and its
#: footnote alone.
MIN_SPLIT_ROWS = 3


class _PageTable(Table):
    """A table that splits across pages only where at least ``MIN_SPLIT_ROWS`` body rows stay on each side, its
    ``footer_rows`` (a footnote) following the last ones and not counted; a shorter table moves whole. reportlab's
    own ``rowSplitRange`` is not enough: after splitting at the last row it allows, it tries the tail in the space
    left on the same page and splits it again (a page then ended in one row and the footnote)."""

    #: rows at the table's end that are not body rows (``grid``'s footnote); reportlab builds the pieces of a split
    #: through the constructor, so ``split`` hands this on to the last piece itself
    footer_rows = 0

    def split(self, availWidth, availHeight):
        self._calc(availWidth, availHeight)
        heights = self._rowHeights
        head = self.repeatRows if isinstance(self.repeatRows, int) else max(self.repeatRows) + 1
        used, fit = 0.0, 0
        for h in heights:
            if used + h > availHeight:
                break
            used, fit = used + h, fit + 1
        if fit >= len(heights):
            return super().split(availWidth, availHeight)
        # the split's first row: at least MIN_SPLIT_ROWS body rows after it, then the footer
        n = min(fit, len(heights) - self.footer_rows - MIN_SPLIT_ROWS)
        if n < head + MIN_SPLIT_ROWS:
            return []
        # half of row n's height past the rows kept: reportlab splits before row n, or earlier where a span asks
        parts = super().split(availWidth, sum(heights[:n]) + heights[n] / 2)
        if len(parts) != 2:
            return []
        first, rest = parts
        if (len(first._cellvalues) < head + MIN_SPLIT_ROWS
                or len(rest._cellvalues) < head + MIN_SPLIT_ROWS + self.footer_rows):
            return []
        rest.footer_rows = self.footer_rows
        return parts


def page_table(rows: list[list], widths: list[float], *, header_rows: int = 0, footer_rows: int = 0,
               row_heights: list[float] | None = None) -> Table:
    """Every table of the report: it repeats its ``header_rows`` on a new page and splits only where at least
    ``MIN_SPLIT_ROWS`` body rows stay on each side; its last ``footer_rows`` (a footnote) are not body rows and
    stay with the last ones."""
    t = _PageTable(rows, colWidths=widths, rowHeights=row_heights, repeatRows=header_rows)
    t.footer_rows = footer_rows
    return t


def grid(rows: list[list], widths: list[float], *, header_rows: int = 1, zebra: bool = True,
         note: Flowable | None = None) -> Table:
    """A ruled table with ``header_rows`` shaded header rows; ``note``, its footnote, is the last row (spanning
    every column, below the closing rule), so a page break never leaves it alone or with the last row only."""
    body = len(rows)
    if note is not None:
        rows = [*rows, [note] + [""] * (len(widths) - 1)]
    t = page_table(rows, widths, header_rows=header_rows, footer_rows=int(note is not None))
    last = body - 1
    style = [
        ("FONTNAME", (0, 0), (-1, -1), FONT),
        ("FONTSIZE", (0, 0), (-1, -1), 7.8),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("BACKGROUND", (0, 0), (-1, header_rows - 1), HEAD_BG),
        ("LINEABOVE", (0, 0), (-1, 0), 0.8, INK),
        ("LINEBELOW", (0, header_rows - 1), (-1, header_rows - 1), 0.6, INK),
        ("LINEBELOW", (0, last), (-1, last), 0.8, INK),
        ("TOPPADDING", (0, 0), (-1, -1), 3), ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
        ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    if note is not None:
        style += [("SPAN", (0, body), (-1, body)), ("LEFTPADDING", (0, body), (-1, body), 0),
                  ("RIGHTPADDING", (0, body), (-1, body), 0), ("VALIGN", (0, body), (-1, body), "TOP")]
    if zebra:
        for r in range(header_rows, body):
            if (r - header_rows) % 2 == 1:
                style.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#f7f7f7")))
    t.setStyle(TableStyle(style))
    return t


def figure(png: bytes, max_h: float) -> Image:
    w, h = figs.fits(*figs.figure_size(png), TEXT_W, max_h)
    return Image(io.BytesIO(png), width=w, height=h)
