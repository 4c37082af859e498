"""The PDF risk report for ethics boards, rendered from a ``profile.json`` (reportlab + matplotlib figures).

Layout (A4): title page; plain-language summary; the Table-3-style table (seed paper, Ziller et al.) with utility
mean and 95% interval; reconstruction bounds against epsilon and kappa (Figure 2 style); SSIM-error CDFs of the
realistic attack (Figure 3 style); membership inference; utility against epsilon with the non-private baseline and
per subgroup; the privacy statement; assumptions and limitations; glossary; reproducibility appendix; and, only
with ``include_images``, reconstructions next to originals behind a warning.

Determinism: the same ``profile.json`` gives the same bytes. The PDF's creation date is the profile's ``created``
time, its document ID is derived from the content (reportlab's invariant mode), and the figures are PNGs without
timestamps. Fonts are matplotlib's bundled DejaVu TrueType files, registered with reportlab and embedded (subset),
so the PDF shows Greek letters (ε, σ, κ) on any viewer.

This module and ``report_*.py`` are the only ones that import reportlab.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import cm
from reportlab.platypus import (
    BaseDocTemplate,
    Frame,
    KeepTogether,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from dpaudit.audit import report_board as board
from dpaudit.audit import report_figures as figs
from dpaudit.audit import report_text as txt
from dpaudit.audit.decision import current_decision
from dpaudit.audit.profile.schema import LevelSummary, Profile, init_reports
from dpaudit.audit.report_layout import (
    FONT,
    FONT_CMD,
    MARGIN,
    MUTED,
    NOTE_BG,
    PAGE_H,
    PAGE_W,
    RULE,
    TEXT_W,
    WARN_BG,
    boxed,
    esc,
    figure,
    grid,
    page_break,
    page_table,
    register_fonts,
    styles,
)
from dpaudit.codec import from_plain
from dpaudit.errors import DataError, DpAuditError, invalid
from dpaudit.numfmt import empirical_epsilon_label, percent_interval
from dpaudit.outputs import write_atomic, write_error


class _Report(board.BoardPages):
    """Builds the flowables of the report from a profile."""

    def __init__(self, profile: Profile, base_dir: Path | None, include_images: bool,
                 run_limits: tuple | None = None) -> None:
        self.p = profile
        self.decision = profile.decision
        #: The limits the profile was run with (None: this report's own, i.e. not re-decided).
        self.run_limits = run_limits
        self.s = styles()
        self.levels = profile.levels()
        self.base_dir = base_dir
        self.include_images = include_images

    # -- helpers --------------------------------------------------------------------------------------------
    def para(self, text: str, style: str = "body") -> Paragraph:
        return Paragraph(text, self.s[style])

    def cell(self, text: str, style: str = "cellc") -> Paragraph:
        return Paragraph(text, self.s[style])

    # -- pages ----------------------------------------------------------------------------------------------
    def title_page(self) -> list:
        p, c, d = self.p, self.p.config, self.p.dataset
        created = _created(p)
        pu = p.privacy()
        rec = txt.record(p)
        unit = ((f"{rec} (record-level guarantee; a patient has up to {pu.data_records_per_patient} {rec}s: "
                 "per patient the guarantee is weaker, see the privacy statement)")
                if pu.image_unit_hides_patients else
                f"{rec} (record-level guarantee)" if pu.unit == "image" else
                f"patient, one volume each (N = {txt.kappa_n(p)} training volumes, up to {pu.records_per_patient} "
                f"slice{'' if pu.records_per_patient == 1 else 's'} per volume)"
                if c.segmentation else
                f"patient (up to {pu.records_per_patient} image{'' if pu.records_per_patient == 1 else 's'} per patient "
                "in the training split)")
        rows = [
            ("Model", f"{c.arch} ({c.image_size}×{c.image_size} pixels, {d.image_shape[0] if d.image_shape else '?'} "
                      "channel(s))"),
            ("Dataset", f"{d.name}: {d.n_train} training, {d.n_val} validation, {d.n_test} test {txt.record(self.p)}s; "
                        f"classes {', '.join(d.label_names) or 'n/a'}"),
            ("Privacy unit", unit),
            ("Privacy budgets", ", ".join(lv.label for lv in self.levels)),
            ("Seeds per budget", str(c.seeds)),
            ("Date", created.strftime("%Y-%m-%d %H:%M UTC")),
            ("dpaudit version", p.dpaudit_version),
        ]
        table = page_table([[self.cell(f"<b>{k}</b>", "cell"), self.cell(esc(v), "cell")] for k, v in rows],
                             [4.2 * cm, TEXT_W - 4.2 * cm])
        table.setStyle(TableStyle([FONT_CMD,
            ("LINEBELOW", (0, 0), (-1, -1), 0.4, RULE), ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
        ]))
        guide = [self.para("<b>How to read the numbers.</b> Every number in this report carries one of four labels:",
                           "body")]
        guide += [self.para(f"• <b>{k}</b>: {v}", "body") for k, v in txt.reading_guide()]
        return [
            self.para("About this report", "h1"),
            self.para(f"Reconstruction and membership-inference risk of DP-SGD training on {esc(d.name)}",
                      "subtitle"),
            table,
            Spacer(1, 0.4 * cm),
            self.para(esc(pu.describe()), "body"),
            *([self.para(f"<b>{esc(note)}</b>", "body")] if (note := txt.synthetic_note(self.p)) else []),
            *self._data_notes(),
            Spacer(1, 0.6 * cm),
            boxed(guide, NOTE_BG),
            Spacer(1, 0.6 * cm),
            self.para("Prepared with dpaudit for an ethics board or data-protection review. The method follows "
                      "Ziller et al., “Reconciling AI Performance and Data Reconstruction Resilience for Medical "
                      "Imaging”, and the bounds of Hayes, Mahloujifar and Balle (2023) and Kaissis et al. (2023).",
                      "small"),
            page_break(),
        ]

    def _data_notes(self) -> list:
        """What the loader passed over and decided (skipped files by reason, files grouped by StudyInstanceUID,
        labels rows that matched no image, duplicates, ...), as the commands printed it: counts and reasons only."""
        lines = self.p.dataset.loading_notes()
        if not lines:
            return [self.para("<b>Data loading.</b> Every file found was used; the loader made no decision to "
                              "report.", "small")]
        return [self.para("<b>Data loading.</b> What the loader left out or decided (counts only; the numbers "
                          "above are of the images used):", "small"),
                *(self.para(f"• {esc(line)}", "small") for line in lines)]

    def summary_page(self) -> list:
        out = [self.para("Summary", "h1"), self.para(txt.headline(self.p))]
        for lv in self.levels:
            pe = txt.patient_epsilon(lv)
            out.append(self.para(f"<b>{txt.budget_name(self.p, lv)}</b>"
                                 f"{'' if not lv.private else f' ({pe + chr(44) + chr(32) if pe else str()}δ = {txt.num(_delta(lv))})'}: "
                                 f"{txt.summary_sentence(self.p, lv)}", "level"))
        mia = [lv for lv in self.levels if lv.bounds is not None and lv.bounds.tpr_at(txt.REPORT_FPR) is not None]
        if mia:
            unit = txt.mia_unit(self.p)
            items = "; ".join(f"{txt.budget_name(self.p, lv)}: at most "
                              f"{txt.pct(lv.bounds.tpr_at(txt.REPORT_FPR), direction='up')} {unit}" for lv in mia)
            out.append(self.para(
                f"<b>Membership inference.</b> At a false-positive rate of {txt.pct(txt.REPORT_FPR)}, the highest "
                f"true-positive rate of any membership test ({txt.LABEL_UPPER}, {unit}): {items}."))
        out.append(self.para(
            "κ = 1/N_train is the prior of the seed paper; the bounds hold for any attack, the realistic number only "
            "for the attack that was run. Details, the full table and the assumptions follow.", "small"))
        out.append(page_break())
        return out

    def table_page(self) -> list:
        n = txt.kappa_n(self.p)
        utility = txt.utility_columns(self.p)
        pp = txt.per_patient(self.p)
        rec = txt.record(self.p)
        head = [f"Privacy budget ε<br/>(target per {rec}, δ)" if pp else "Privacy budget ε<br/>(target, δ)",
                "Noise σ<br/>training",
                f"ε achieved<br/>per patient<br/>(per {rec}; RDP)" if pp else "ε achieved<br/>(PLD; RDP)",
                *((f"Test MCC<br/>mean [95% interval]<br/>{txt.seeds_text(self.levels)}",) if utility == [("mcc", "MCC")]
                  else (f"Test {label}<br/>mean ± std" for _, label in utility)),
                f"Worst case<br/>{txt.rero_unit(self.p)}<br/>κ = 1/{n}", f"Relaxed<br/>{txt.rero_unit(self.p)}<br/>κ = 1/{n}",
                f"Realistic<br/>attack<br/>per {rec}", "Noise σ<br/>attack scenario"]
        sub = ["", "", txt.LABEL_UPPER, *([txt.LABEL_EMPIRICAL] * len(utility)), txt.LABEL_UPPER, txt.LABEL_UPPER,
               txt.LABEL_EMPIRICAL + "<br/>(decoder)", ""]
        rows: list[list] = [[self.cell(h, "head") for h in head],
                            [self.cell(f"<i>{s}</i>", "cellc") for s in sub]]
        for lv in self.levels:
            rows.append([self.cell(x) for x in self._table_row(lv)])
        widths = [2.3, 1.8, 2.3, *([2.6 if len(utility) == 1 else 2.1] * len(utility)), 2.0, 2.0, 2.5, 1.9]
        scale = TEXT_W / (sum(widths) * cm)
        note = self.para(
                   (f"ε achieved: tight PLD accountant per patient (the k {rec}s of one patient moving together, "
                    f"the unit the risks are stated for), with the per-{rec} value that training calibrates and "
                    f"Opacus' RDP per {rec} in parentheses ({txt.LABEL_RDP}); the budget is the per-{rec} target. "
                    if pp else
                    f"ε: tight PLD accountant (RDP in parentheses, what Opacus reports: {txt.LABEL_RDP}). ") + "Worst case / relaxed "
                   f"({txt.rero_unit(self.p, long=True)}): highest probability that any attack reconstructs "
                   + (f"a training patient's {rec}s (the k {rec}s moving together)" if pp else f"a training {rec}")
                   + f", for the two formal threat models, at the prior κ = 1/{n}. Realistic (per {rec}): fraction "
                   f"of attacked training {rec}s whose best "
                   f"reconstruction has SSIM > {self.p.success_ssim():g} under the imprint-layer attack with its strongest "
                   "decoder "
                   "(named); the noise multiplier of that attack scenario (batch size 1) is in the last column, "
                   "as in the seed paper. Without DP no guarantee holds (100%).", "small")
        out = [self.para("Risk and utility per privacy budget", "h1"),
               self.para("The layout follows Table 3 of the seed paper: per privacy budget the model's diagnostic "
                         "performance next to three tiers of reconstruction risk."),
               grid(rows, [w * cm * scale for w in widths], header_rows=2, note=note)]
        notes = list(dict.fromkeys(n for lv in self.levels for n in lv.notes))
        if notes:
            # the budgets' own notes: a budget past the noise search range, the attack's (a weak imprint block)
            out.append(self.para("<b>Notes on the budgets.</b> " + " ".join(
                esc(n.rstrip(".")) + "." for n in notes), "small"))
        out += self._utility_detail_table()
        out += self._user_kappa_table()
        out.append(page_break())
        return out

    def _table_row(self, lv: LevelSummary) -> list[str]:
        t0 = lv.train[0] if lv.train else None
        if lv.private:
            eps = f"{lv.label.split('= ')[1]}<br/>δ = {txt.num(_delta(lv))}"
            sigma = f"{t0.noise_multiplier:.4g}" if t0 else "n/a"
            b = lv.bounds
            achieved = (f"{txt.eps_up(b.epsilon)}<br/>({txt.eps_up(b.epsilon_rdp)})" if b is not None
                        else "n/a")
            if b is not None and b.epsilon_patient is not None and txt.per_patient(self.p):
                achieved = (f"{txt.eps_up(b.epsilon_patient)} per patient<br/>({txt.eps_up(b.epsilon)} per "
                            f"{txt.record(self.p)}; "
                            f"RDP {txt.eps_up(b.epsilon_rdp)})")
            worst = txt.pct(lv.worst_case, direction="up")
            relaxed = txt.pct(lv.relaxed, direction="up")
        else:
            eps, sigma, achieved = "non-private", "0", "∞"
            worst = relaxed = "100%<br/>(no guarantee)"
        utility = ([txt.interval(txt.utility_values(lv), with_n=False)] if not self.p.config.segmentation else
                   [txt.spread(lv.utility[key]) for key, _ in txt.utility_columns(self.p)])
        if lv.attack is not None:
            r = lv.attack.strongest
            realistic = f"{txt.pct(r.success_rate)}<br/>({r.decoder}, n = {r.n_images})"
            att_sigma = f"{lv.attack.noise_multiplier:.3g}"
        else:
            realistic, att_sigma = "not run", "n/a"
        return [eps, sigma, achieved, *utility, worst, relaxed, realistic, att_sigma]


    def _utility_detail_table(self) -> list:
        metrics = [("mcc", "MCC"), ("balanced_accuracy", "Balanced accuracy"), ("auroc", "AUROC"),
                   ("accuracy", "Accuracy")]
        if self.p.config.segmentation:
            metrics = [*txt.utility_columns(self.p), *((k.replace("dice_", "iou_"), label.replace("Dice", "IoU"))
                                                       for k, label in txt.utility_columns(self.p)),
                       ("accuracy", "Pixel accuracy")]
        present = [(k, name) for k, name in metrics if any(lv.utility[k].mean is not None for lv in self.levels)]
        unit = txt.mia_unit(self.p)
        head = ["Privacy budget", *[n for _, n in present], f"{txt.headline_utility(self.p)[1]} vs non-private",
                f"MIA TPR at FPR 0.1% {unit}",
                f"MIA advantage {unit}"]
        rows = [[self.cell(h, "head") for h in head]]
        for lv in self.levels:
            tpr = lv.bounds.tpr_at(txt.REPORT_FPR) if lv.bounds else None
            adv = lv.bounds.mia_advantage if lv.bounds else None
            rows.append([self.cell(lv.label)] + [self.cell(txt.interval(txt.utility_values(lv, k), metric=k,
                                                                       with_n=False)) for k, _ in present] + [
                self.cell(txt.versus_baseline(self.p, lv)),
                self.cell(txt.pct(tpr, direction="up") if lv.private else "100%"),
                self.cell(txt.pct(adv, direction="up") if lv.private else "100%")])
        widths = [2.0] + [2.2] * len(present) + [3.1, 1.8, 1.9]  # room for "not distinguishable" unbroken
        scale = TEXT_W / (sum(widths) * cm)
        # heading, table and caption on one page (a caption alone at the top of the next page reads as orphaned)
        return [Spacer(1, 8), KeepTogether([
            self.para("Utility in detail and membership inference", "h2"),
            grid(rows, [w * cm * scale for w in widths]),
            Spacer(1, 3),
            self.para(f"Utility: {txt.LABEL_EMPIRICAL}, on the test split, mean [95% t-interval] over "
                      f"{txt.seeds_text(self.levels)}, cut to the metric's range; "
                      f"against the non-private baseline: the difference of mean {esc(txt.headline_utility(self.p)[1])} "
                      f"with Welch's t-test p-value. Membership-inference TPR and advantage: {txt.LABEL_UPPER} for any attacker, {unit} "
                      "(advantage = TPR − FPR at the best threshold).", "small")])]

    def _user_kappa_table(self) -> list:
        kappas = self.p.config.kappas
        if not kappas:
            return []
        head = ["Privacy budget"] + [f"κ = {txt.num(k)}<br/>worst / relaxed" for k in kappas]
        rows = [[self.cell(h, "head") for h in head]]
        for lv in self.levels:
            if not lv.private or lv.bounds is None:
                continue
            cells = [self.cell(lv.label)]
            for k in kappas:
                p = next((x for x in lv.bounds.rero if abs(x.kappa - k) <= 1e-12 * k), None)
                cells.append(self.cell("n/a" if p is None else
                                       f"{txt.pct(p.worst_case, direction='up')} / {txt.pct(p.relaxed, direction='up')}"))
            rows.append(cells)
        return [Spacer(1, 8), self.para("Reconstruction bounds at the user's priors κ", "h2"),
                grid(rows, [TEXT_W / len(head)] * len(head),
                     note=self.para(f"{txt.LABEL_UPPER}s (worst case / relaxed).", "small"))]

    def bounds_page(self) -> list:
        out = [self.para("Reconstruction risk: formal bounds and the realistic attack", "h1"),
               self.para(
                   "Left: the worst-case (purple) and relaxed (orange) upper bounds against the privacy budget at "
                   "κ = 1/N_train, with the realistic attack's measured success (green squares); "
                   "budgets of 10⁴ and above sit past the break in the axis, with no line drawn across it. Right: the bounds "
                   "against the prior κ for each budget; the dotted diagonal is the blind guess. The gap between "
                   "the curves shows how much of the worst-case risk rests on assumptions a real attacker does not "
                   "meet (seed paper, Figure 2)."),
               figure(figs.rero_figure(self.p), 8.0 * cm),
               self.para(f"All bound curves: {txt.LABEL_UPPER}s (tight accountant). Squares: {txt.LABEL_EMPIRICAL}.",
                         "small")]
        cdf = figs.ssim_cdf_figure(self.p)
        if cdf is not None:
            out += [Spacer(1, 6),
                    self.para("Realistic attack: reconstruction errors", "h2"),
                    self.para(
                        f"For each privacy budget and decoder, the share of attacked {txt.record(self.p)}s whose best reconstruction "
                        "has an SSIM error (1 − SSIM) below the value on the x-axis (seed paper, Figure 3, left). "
                        "Curves that rise to the left of the threshold line mean successful reconstructions; "
                        "the “paper” decoder reproduces the seed paper's attack, the “strong” decoder is "
                        "dpaudit's stronger one, used for the headline numbers."),
                    figure(cdf, 7.5 * cm)]
            out += self._attack_table()
        out.append(page_break())
        return out

    def _attack_table(self) -> list:
        head = ["Privacy budget", "σ attack", "Decoder", f"Success (SSIM > {self.p.success_ssim():g})", "95% interval", "Mean SSIM",
                "Images", "Excluded"]
        rows = [[self.cell(h, "head") for h in head]]
        for lv in self.levels:
            a = lv.attack
            if a is None:
                continue
            for r in a.rows:
                rows.append([self.cell(x) for x in (
                    lv.label, f"{a.noise_multiplier:.3g}", r.decoder, txt.pct(r.success_rate),
                    " – ".join(percent_interval(r.ci_low, r.ci_high)), f"{r.mean_ssim:.3f}", str(r.n_images),
                    str(a.n_excluded))])
        a0 = next(lv.attack for lv in self.levels if lv.attack is not None)
        return [Spacer(1, 4), grid(rows, [TEXT_W / len(head)] * len(head), note=self.para(
                    f"All {txt.LABEL_EMPIRICAL}. SSIM: {esc(a0.ssim_variant)}; {txt.record(self.p)}s with fewer than "
                    f"10% non-zero pixels excluded; {a0.connection} imprint connection with {a0.bins} bins; "
                    f"{txt.record(self.p)}s of shape {'×'.join(str(x) for x in a0.image_shape)}.", "small"))]

    def mia_page(self) -> list:
        out = [self.para("Membership inference", "h1"), self.para(txt.mia_sentence(self.p))]
        png = figs.mia_figure(self.p)
        if png is not None:
            out.append(figure(png, 7.5 * cm))
        fprs = sorted({p.fpr for b in self.p.bounds for p in b.mia_tpr_at_fpr})
        if fprs:
            unit = txt.mia_unit(self.p)
            head = [f"Privacy budget<br/>(TPR {unit})", *[f"TPR at FPR {txt.pct(f, digits=3 if f < 1e-4 else 2)}"
                                                         for f in fprs],
                    f"Advantage {unit}"]
            rows = [[self.cell(h, "head") for h in head]]
            for lv in self.levels:
                if lv.bounds is None:
                    continue
                rows.append([self.cell(lv.label)] + [self.cell(txt.pct(lv.bounds.tpr_at(f), direction="up"))
                                                     for f in fprs]
                            + [self.cell(txt.pct(lv.bounds.mia_advantage, direction="up"))])
            out.append(grid(rows, [TEXT_W / len(head)] * len(head), note=self.para(
                f"{txt.LABEL_UPPER}s for any membership-inference attacker, {unit} (same assumptions and unit as the "
                "worst-case reconstruction bound).", "small")))
        audits = self.p.mia_audits
        if audits:
            levels = {m.confidence for m in audits}
            emp = (empirical_epsilon_label(levels.pop()) if len(levels) == 1
                   else "a lower bound at the confidence shown")
            head = ["Privacy budget", f"Accountant ε per image ({txt.LABEL_UPPER})", f"Empirical ε per image ({emp})",
                    "Confidence",
                    "Canaries", "Largest certifiable ε", "Method"]
            rows = [[self.cell(h, "head") for h in head]]
            for m in audits:
                rows.append([self.cell(x) for x in (
                    txt.level_label(m.epsilon_target), txt.eps_up(m.accountant_epsilon),
                    txt.eps_down(m.epsilon_lower_bound), txt.pct(m.confidence), str(m.canaries),
                    txt.eps_down(m.ceiling), esc(m.method))])
            ceil = max((m.ceiling for m in audits), default=None)
            # the caveat box stays with its table (alone on the next page it reads as orphaned)
            out += [Spacer(1, 6), KeepTogether([
                self.para("Empirical canary audit", "h2"), grid(rows, [TEXT_W / len(head)] * len(head)),
                Spacer(1, 4), boxed([self.para(txt.empirical_mia_caveat(audits[0].canaries, ceil,
                                                                        audits[0].confidence))], NOTE_BG)])]
        else:
            out.append(self.para(
                "No empirical membership audit was run for this profile (add <font face='DejaVuSansMono'>"
                "--mia-audit</font>). " + txt.empirical_mia_caveat(None, None), "small"))
        out.append(page_break())
        return out

    def utility_page(self) -> list:
        out = [self.para("Utility", "h1"),
               self.para("Diagnostic performance (Matthews correlation coefficient on the held-out test split) "
                         "against the privacy budget, mean and 95% t-interval over seeds; the green line and band "
                         "are the non-private baseline (mean and its 95% t-interval)." if not self.p.config.segmentation else
                         "Segmentation quality against the privacy budget: Dice per class, computed per test volume "
                         "on the reassembled 3-D prediction and averaged over volumes (seed paper, section 2.1.2); "
                         "dashed lines are the non-private baseline. A class absent from a volume's ground truth is "
                         "left out of that class's mean (MONAI's convention).")]
        png = figs.utility_figure(self.p)
        if png is not None:
            out.append(figure(png, 6.2 * cm))
        out += self._init_table()
        out += self.subgroup_section()
        out.append(page_break())
        return out

    def _init_table(self) -> list:
        """The headline utility (MCC; for segmentation the first foreground class's Dice) per privacy budget per
        initialisation (only when the profile compares several)."""
        inits = list(self.levels[0].mcc_by_init) if self.levels else []
        # What loading each file changed (a final layer freshly initialised for another number of classes).
        loaded = [self.para(f"Loading {esc(label)}: {esc(line)}.", "small")
                  for label, report in init_reports(self.p).items() for line in report]
        if len(inits) < 2:
            return [self.para("Initialisation", "h2"), *loaded] if loaded else []
        head = ["Privacy budget"] + [f"from {i}" for i in inits]
        rows = [[self.cell(esc(h), "head") for h in head]]
        key, name = txt.headline_utility(self.p)  # the metric the runs were scored with: MCC, or Dice
        for lv in self.levels:
            rows.append([self.cell(lv.label)] + [
                self.cell(txt.interval(txt.init_utility_values(self.p, lv, i, key), metric=key)) for i in inits])
        w0 = 4.0 * cm
        rest = (TEXT_W - w0) / len(inits)
        trainable = self.p.config.trainable
        return [self.para("Utility per initialisation", "h2"),
                grid(rows, [w0] + [rest] * len(inits), note=self.para(f"Test {esc(name)}, mean [95% t-interval] over seeds ({txt.LABEL_EMPIRICAL}), of every budget "
                          f"trained from each initialisation (runs from a file train {esc(trainable)} layers; "
                          "'scratch' is a random start). The privacy guarantee covers the fine-tuning data only, not the data "
                          "the initial weights were trained on. The bounds and the attack use the runs from "
                          f"{esc(inits[0])}.", "small")), *loaded]

    def statement_pages(self) -> list:
        out = [self.para("Privacy statement", "h1")]
        out += [self.para(x) for x in txt.privacy_statement(self.p)]
        out.append(self.para("Assumptions", "h2"))
        out += [self.para(x, "bullet", ) for x in txt.assumptions(self.p)]
        out.append(self.para("Limitations", "h2"))
        out += [self.para(x, "bullet") for x in txt.limitations(self.p)]
        out.append(page_break())
        out.append(self.para("Glossary", "h1"))
        rows = [[self.cell(f"<b>{esc(k)}</b>", "cell"), self.cell(esc(v), "cell")] for k, v in txt.glossary(self.p)]
        t = page_table(rows, [4.4 * cm, TEXT_W - 4.4 * cm])
        t.setStyle(TableStyle([FONT_CMD, ("LINEBELOW", (0, 0), (-1, -1), 0.3, RULE), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        out += [t, page_break()]
        return out

    def appendix(self) -> list:
        p = self.p
        out = [self.para("Reproducibility", "h1"),
               self.para(("The exact command that produced this report (run it again to reproduce every number; a "
                          "finished profile resumes without re-running its tasks)" if not self._redecided() else
                          "The exact command that produced these results, with the limits the profile was run with "
                          "(run it again to reproduce every number; a finished profile resumes without re-running "
                          "its tasks). This report was then decided again on other limits, by the command below it")
                         + (f"; {esc(self._moved())}" if self._moved() else "") + ":"),
               boxed([self.para(esc(self._profile_command()), "mono")], NOTE_BG), Spacer(1, 4),
               self.para("Re-render this document from the stored results (with the board's limits it was decided "
                         "on; the PDF is written beside profile.json):"),
               boxed([self.para(esc(self._render_command()), "mono")], NOTE_BG),
               self._config_section("Configuration")]
        out.append(self.para("Training runs", "h2"))
        # the metric each run was scored with: MCC for a classifier, Dice per foreground class for segmentation
        classes = next((t.utility.classes for t in p.train if t.utility.classes), ())
        metric = "Test MCC" if not classes else f"Test Dice ({', '.join(classes)})"
        head = ["Budget", "Seed", "σ", "q", "T", "δ", "ε (PLD)", "ε (RDP)", metric, "Checkpoint"]
        rows = [[self.cell(esc(h), "head") for h in head]]
        for t0 in p.train:
            rows.append([self.cell(x) for x in (
                txt.level_label(t0.epsilon_target), str(t0.seed), f"{t0.noise_multiplier:.4g}",
                f"{t0.sampling_probability:.4g}", str(t0.steps), txt.num(t0.target_delta),
                txt.eps_up(t0.epsilon), txt.eps_up(t0.epsilon_rdp),
                (f"{t0.utility.mcc:.3f}" if not t0.utility.classes else ", ".join(
                    txt.pct(d, digits=1) for d in t0.utility.dice)),
                esc(t0.checkpoint) + (" (reused)" if t0.reused_checkpoint else ""))])
        widths = [1.9, 1.0, 1.2, 1.4, 0.8, 1.3, 1.6, 1.6, 1.2, 5.4]
        scale = TEXT_W / (sum(widths) * cm)
        out.append(grid(rows, [x * cm * scale for x in widths]))
        out.append(self.para("Software and run time", "h2"))
        env = ", ".join(f"{v.name} {v.version}" for v in p.environment)
        stages = "; ".join(f"{s.stage} {s.seconds:.0f} s ({s.tasks_run} run, {s.tasks_reused} reused)"
                           for s in p.stages)
        where = f" Training and attack model passes ran on {esc(p.computed_on)}." if p.computed_on else ""
        out.append(self.para(f"dpaudit {esc(p.dpaudit_version)}; {esc(env)}. Profile schema version "
                             f"{p.schema_version}. Created {esc(p.created)}.{where}", "small"))
        if stages:
            out.append(self.para(f"Stage wall times of the last invocation: {esc(stages)}.", "small"))
        return out

    def _limits(self) -> tuple:
        return tuple(self.decision.limits) if self.decision is not None else ()

    def _redecided(self) -> bool:
        """Whether this report's limits differ from those the profile was run with (``dpaudit report DIR --max-...``)."""
        return self.run_limits is not None and tuple(self.run_limits) != self._limits()

    def _profile_command(self) -> str:
        """The stored command's configuration and --out with the limits the profile was run with: run as printed,
        it gives the same configuration hash and decision (a profile command with other limits would be refused
        in that folder; :meth:`_render_command` re-decides)."""
        out = self.p.out_in(self.base_dir)
        return self.p.config.command(out, tuple(self.run_limits) if self.run_limits is not None else self._limits(),
                                     self.p.computed_on)

    def _moved(self) -> str:
        """A sentence when this profile.json lies elsewhere than the folder it was run in (a copied run folder):
        the commands name this folder, not that one; empty otherwise."""
        run_out = self.p.run_out
        if self.base_dir is None or run_out is None or self.p.out_in(self.base_dir) == run_out:
            return ""
        return (f"the profile was run in {run_out}; this copy of its results is in {self.base_dir}, and both "
                "commands below name this folder, so they resume from the results stored here")

    def _render_command(self) -> str:
        import shlex

        out = self.p.out_in(self.base_dir)
        # no -o: the PDF goes beside profile.json (report.pdf for the profile's own limits), not the current folder
        parts = ["dpaudit", "report", out]
        for lim in (self.decision.limits if self.decision is not None else ()):
            parts += lim.cli()
        return shlex.join(parts)

    def _config_section(self, title: str) -> KeepTogether:
        """The configuration's heading and table on one page: where the rest of the page cannot hold them, both
        move to the next page (a table split after its first rows left a page holding only its last ones)."""
        return KeepTogether([self.para(title, "h2"), self._config_table()])

    def _config_table(self) -> Table:
        """Every configuration field, in two column pairs."""
        cfg_rows = [[self.cell(esc(k), "cell"), self.cell(esc("not set (the default)" if v is None else str(v)), "cell")]
                    for k, v in _config_items(self.p.config)]
        half = (len(cfg_rows) + 1) // 2
        left, right = cfg_rows[:half], cfg_rows[half:]
        right += [[self.cell(""), self.cell("")]] * (len(left) - len(right))
        pairs = [a + b for a, b in zip(left, right, strict=True)]
        w = TEXT_W / 2
        t = page_table(pairs, [w * 0.45, w * 0.55, w * 0.45, w * 0.55])
        t.setStyle(TableStyle([FONT_CMD, ("LINEBELOW", (0, 0), (-1, -1), 0.3, RULE), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
        return t

    def images_page(self) -> list:
        paths = [(lv, path) for lv in self.levels if lv.attack is not None for path in lv.attack.images]
        warning = boxed([self.para(
            "<b>Warning: this page shows training images (possibly patient data) and their reconstructions.</b> "
            "Do not distribute this report beyond the people authorised to see the data. Re-render without "
            "<font face='DejaVuSansMono'>--include-images</font> for a shareable version.")], WARN_BG,
            colors.HexColor("#cb181d"))
        out: list = [page_break(), self.para("Best reconstructions", "h1"), warning, Spacer(1, 6)]
        if not paths:
            out.append(self.para("No reconstruction images were stored with this profile (run the profile with "
                                 "--include-images to store them)."))
            return out
        for lv, rel in paths:
            path = (self.base_dir / rel) if self.base_dir is not None else Path(rel)
            if not path.is_file():
                raise DataError(f"reconstruction image {path} listed in profile.json is missing. Fix: re-run the "
                                "profile with --include-images, or render without --include-images.")
            png = path.read_bytes()
            out += [self.para(f"{lv.label}: originals (top) and best reconstructions (bottom)", "small"),
                    KeepTogether([figure(png, 5.5 * cm)])]
        return out

    def paper_mode_page(self) -> list:
        """MSD Liver data (:func:`dpaudit.audit.paper_mode.is_msd_liver`): the seed paper's MSD Liver rows of
        Table 3 recomputed in paper mode (Edgeworth), beside the printed values."""
        from dpaudit.audit.paper_mode import MSD_LIVER_N_TRAIN, MSD_LIVER_STEPS, PAPER_DELTA, msd_liver_rows

        rows = [[self.cell(h, "head") for h in (
            "ε", "σ (Opacus RDP)", "Worst case<br/>paper mode", "Worst case<br/>seed paper", "Relaxed<br/>paper mode",
            "Relaxed<br/>seed paper")]]
        for r in msd_liver_rows():
            rows.append([self.cell(x) for x in (
                f"{r.epsilon:g}", f"{r.noise_multiplier:.4g}", txt.pct(r.worst_case, digits=2, direction="up"),
                txt.pct(r.paper_worst_case, digits=2), txt.pct(r.relaxed, digits=2, direction="up"),
                txt.pct(r.paper_relaxed, digits=2))])
        classes = ", ".join(self.p.dataset.label_names)
        out = [page_break(), self.para("Paper mode: MSD Liver (seed paper, Table 3)", "h1"),
               self.para(
                   f"<b>What this is.</b> This profile's data is an MSD Liver task folder ({esc(classes)}), the "
                   "seed paper's segmentation dataset, so this appendix recomputes the paper's MSD Liver rows of "
                   "Table 3 and sets them beside the values the paper printed: a check that dpaudit's bounds "
                   "reproduce the paper. The rows describe the <i>paper's</i> training configuration, not this "
                   "profile's; this profile's own risk (sound upper bounds) is in the risk table."),
               self.para(
                   f"The seed paper's MSD Liver configuration: N_train = {MSD_LIVER_N_TRAIN} volumes, batch size 1 "
                   f"(q = 1/{MSD_LIVER_N_TRAIN}), T = {MSD_LIVER_STEPS} steps (500 epochs), δ = {PAPER_DELTA:g}, "
                   f"κ = 1/{MSD_LIVER_N_TRAIN}, σ from Opacus' RDP calibration. Paper mode uses the Edgeworth "
                   "approximation of the seed paper (an approximation, not a bound; it can lie below the tight "
                   "bound)."),
               grid(rows, [TEXT_W / 6] * 6, note=self.para(
                   "Differences in the last digit come from the calibrated σ (bisection to the budget).", "small"))]
        return out

    def story(self) -> list:
        out = self.board_page() + self.signoff_page() + self.checklist_page()
        out += self.title_page() + self.summary_page() + self.table_page() + self.bounds_page()
        out += self.mia_page() + self.utility_page()
        if self.p.federated is not None:
            from dpaudit.audit.report_federated import federated_page

            out += federated_page(self, self.p.federated, grid, TEXT_W)
        out += self.statement_pages() + self.appendix()
        from dpaudit.audit.paper_mode import is_msd_liver

        if self.p.config.segmentation and is_msd_liver(self.p.config.dataset, self.p.dataset.label_names):
            out += self.paper_mode_page()
        if self.include_images:
            out += self.images_page()
        return out


def _delta(lv: LevelSummary) -> float | None:
    if lv.bounds is not None:
        return lv.bounds.target_delta
    return lv.train[0].target_delta if lv.train else None


def _created(profile: Profile) -> _dt.datetime:
    try:
        created = _dt.datetime.fromisoformat(profile.created)
    except ValueError:
        raise invalid("created", profile.created, "an ISO 8601 date and time, e.g. 2025-01-31T12:00:00+00:00",
                      "fix the field in profile.json") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=_dt.UTC)
    return created.astimezone(_dt.UTC)


def _config_items(c) -> list[tuple[str, object]]:
    import dataclasses

    out = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, tuple):
            v = ", ".join(txt.num(x) if isinstance(x, float) else str(x) for x in v) or "-"
        elif isinstance(v, float):
            v = txt.num(v, 4)
        out.append((f.name, v))
    return out


def _fixed_timestamp(created: _dt.datetime):
    """A reportlab TimeStamp carrying the profile's creation time (so the PDF's dates are reproducible)."""
    from reportlab.pdfbase.pdfdoc import TimeStamp

    ts = TimeStamp(invariant=1)
    ts.t = created.timestamp()
    ts.lt = created.timetuple()
    ts.YMDhms = tuple(ts.lt)[:6]
    ts.dhh = ts.dmm = 0
    ts.tzname = "UTC"
    return ts


def stored_images(profile: Profile) -> tuple[str, ...]:
    """The reconstruction images profile.json lists (none unless the profile ran with --include-images)."""
    return tuple(path for a in profile.attacks for path in a.images)


def render_report(profile: Profile | str | os.PathLike, pdf_path: str | os.PathLike, *,
                  include_images: bool | None = None, base_dir: str | os.PathLike | None = None,
                  run_limits: tuple | None = None, field: str = "out") -> Path:
    """Render the PDF risk report.

    Parameters
    ----------
    profile:
        A :class:`Profile` or the path of a ``profile.json``.
    pdf_path:
        Where to write the PDF (parent folders are created).
    include_images:
        Show stored reconstructions next to originals (patient images, behind a warning). None follows the
        profile's own ``include_images`` setting.
    base_dir:
        Folder that relative paths in the profile refer to; defaults to the folder of ``profile.json``.
    run_limits:
        The limits the profile was run with, when ``profile`` carries a decision on other limits (``dpaudit report
        DIR --max-rero ...``): the reproduce command gives those (a profile command with other limits is refused
        in that folder), and the re-render command this report's. None: the profile's own decision.
    field:
        What a failed write names (:func:`dpaudit.outputs.write_atomic`): the configuration field of the output
        folder (``out``) or the flag that named ``pdf_path`` (``--output``).

    The PDF is written whole or not at all (:func:`dpaudit.outputs.write_atomic`). A stored decision that ranked the budgets by another utility than the task's headline one (a segmentation
    profile.json written when decisions ranked by MCC) is re-made with its limits, and the first page says so
    (:func:`~dpaudit.audit.decision.current_decision`).

    Returns
    -------
    pathlib.Path
        The written PDF. Rendering the same profile twice gives the same bytes.
    """
    if not isinstance(profile, Profile):
        path = Path(profile)
        profile = load_profile(path)
        base = Path(base_dir) if base_dir is not None else path.parent
    else:
        base = Path(base_dir) if base_dir is not None else None
    # A stored decision ranked by another utility than today's rule is re-made with its limits (and says so).
    profile = current_decision(profile)
    if include_images is None:
        include_images = profile.config.include_images
    # Nothing to show: no restricted stamp on every page (the CLI says why: stored_images).
    include_images = include_images and bool(stored_images(profile))
    register_fonts()
    out = Path(pdf_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, field) from None
    story = _Report(profile, base, include_images, run_limits).story()
    created = _created(profile)
    title = f"Privacy risk report: {profile.dataset.name}"

    def footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 7)
        canvas.setFillColor(MUTED)
        canvas.drawString(MARGIN, 1.0 * cm, f"dpaudit {profile.dpaudit_version} · {title} · "
                                             f"{created.strftime('%Y-%m-%d')}")
        canvas.drawRightString(PAGE_W - MARGIN, 1.0 * cm, f"page {doc.page}")
        if include_images:
            canvas.setFillColor(colors.HexColor("#cb181d"))
            canvas.drawCentredString(PAGE_W / 2, PAGE_H - 1.0 * cm, "CONTAINS TRAINING IMAGES - RESTRICTED")
        canvas.restoreState()

    buf = io.BytesIO()
    doc = BaseDocTemplate(buf, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                          bottomMargin=MARGIN, title=title, author="dpaudit", subject="privacy risk report",
                          creator=f"dpaudit {profile.dpaudit_version}", invariant=1, pageCompression=1,
                          initialFontName=FONT)  # no un-embedded Helvetica anywhere
    frame = Frame(MARGIN, MARGIN, TEXT_W, PAGE_H - 2 * MARGIN, id="body", leftPadding=0, rightPadding=0,
                  topPadding=0, bottomPadding=0)
    doc.addPageTemplates([PageTemplate(id="page", frames=[frame], onPage=footer)])

    from reportlab.pdfgen.canvas import Canvas

    class _Canvas(Canvas):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            # invariant=1 fixes the ID seed; the visible dates are the profile's creation time.
            self._doc._timeStamp = _fixed_timestamp(created)
            self._doc.signature.update(profile.created.encode())

    doc.build(story, canvasmaker=_Canvas)
    return write_atomic(out, buf.getvalue(), field=field)


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate a ``profile.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "profile.json"
    if not p.is_file():
        raise DataError(f"{str(p)!r} does not exist: there is no profile.json to read. Fix: pass the profile.json "
                        "written by `dpaudit profile --out DIR` (DIR/profile.json) or the folder DIR.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a PDF or another binary file passed by mistake
        raise DataError(f"profile {str(p)!r} is not UTF-8 JSON text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}). Fix: pass the profile.json written by `dpaudit profile --out DIR`.") from None
    fix = "Fix: pass the profile.json written by `dpaudit profile --out DIR` (or the folder DIR)."
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(p)!r} is not a profile.json: it is not JSON ({exc.msg} at line {exc.lineno}, column "
                        f"{exc.colno}{'; the file is empty' if not text.strip() else ''}). {fix}") from None
    if not isinstance(data, dict) or not PROFILE_KEYS <= data.keys():
        kind = _json_kind(data) or f"it lacks the keys every profile.json has ({', '.join(sorted(PROFILE_KEYS))})"
        raise DataError(f"{str(p)!r} is not a profile.json: {kind}. {fix}")
    try:
        return from_plain(Profile, data)
    except DpAuditError as exc:  # a profile.json, but a field does not read: name the file
        raise DataError(f"profile {str(p)!r}: {exc}") from None


#: Keys every profile.json holds (:class:`Profile`); a JSON object without them is another file.
PROFILE_KEYS = frozenset({"schema_version", "dpaudit_version", "config", "dataset"})

#: Other JSON files dpaudit writes, told apart by keys only they hold (what a user may pass to `report` by mistake).
_OTHER_JSON = (
    ({"settings", "per_image"}, "it is an attack.json (written by `dpaudit attack --out DIR`)"),
    ({"rows", "ssim_variant", "threat_model"}, "it is the output of `dpaudit federated attack --json`"),
    ({"rows", "ssim_variant"}, "it is the output of `dpaudit attack --json`"),
    ({"epsilon_achieved", "metrics"}, "it is a metrics.json (written by `dpaudit train --out DIR`)"),
    ({"dp_level", "server_view"}, "it is the output of `dpaudit federated train --json`"),
    ({"rero", "mia"}, "it is the output of `dpaudit bounds --json`"),
    ({"levels", "profile"}, "it is the summary of `dpaudit profile --json`, not the profile.json it names"),
)


def _json_kind(data: object) -> str | None:
    """What a JSON file that is not a profile.json holds, when it is recognisably another dpaudit file."""
    if isinstance(data, list):
        return "it is a JSON list (a profile.json is an object; a list of phases is `dpaudit bounds --history`)"
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    return next((kind for keys, kind in _OTHER_JSON if keys <= data.keys()), None)
