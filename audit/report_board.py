"""The pages of the report an ethics board decides and signs on: the decision (first page), the sign-off form, the
reporting checklist, and subgroup risk beside subgroup utility.

A mixin of :class:`dpaudit.audit.report._Report` (it uses the report's ``p``, ``levels``, ``para`` and ``cell``);
the numbers come from :mod:`dpaudit.audit.decision`, :mod:`dpaudit.audit.checklist` and
:mod:`dpaudit.audit.stats`, the words from :mod:`dpaudit.audit.report_text`. Marks never rely on colour alone:
every within/over cell says so in words and with a sign (✓ / ✗), the tint only repeats it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

from reportlab.lib import colors
from reportlab.lib.units import cm
from reportlab.platypus import KeepTogether, Spacer, Table, TableStyle

from dpaudit.audit import report_text as txt
from dpaudit.audit.checklist import Checklist, build_checklist
from dpaudit.audit.decision import LABEL_EMPIRICAL, Decision, Limit
from dpaudit.audit.profile.schema import LevelSummary
from dpaudit.audit.report_layout import (
    FONT_CMD,
    NOTE_BG,
    RULE,
    TEXT_W,
    boxed,
    esc,
    grid,
    page_break,
    page_table,
)
from dpaudit.identifiers import COMPLEMENT_MARK, COMPLEMENT_REASON, MIN_SUBGROUP_UNITS, withheld_mark
from dpaudit.numfmt import UNDEFINED_METRIC, percent_interval

if TYPE_CHECKING:
    from dpaudit.audit.profile.schema import Profile

WITHIN_BG = colors.HexColor("#e5f5e0")
OVER_BG = colors.HexColor("#fde0dd")
INCONCLUSIVE_BG = colors.HexColor("#fff3c4")
#: Subgroups with fewer test images than this get a "small group" flag: an MCC on fewer than 30 images moves by
#: more than 0.1 when one or two predictions change.
SMALL_TEST_GROUP = 30
#: Subgroups with fewer attacked images than this are flagged: with 0 successes in 10 images the exact 95% upper
#: limit of the success rate is still 31% (Clopper-Pearson), so a lower count says almost nothing.
SMALL_ATTACK_GROUP = 10


def config_sha256(profile: Profile) -> str:
    """SHA-256 of the profile's configuration as canonical JSON (sorted keys, :meth:`ProfileConfig.canonical`:
    resolved values, whether typed or defaulted): what the board signs."""
    return hashlib.sha256(json.dumps(profile.config.canonical(), sort_keys=True, ensure_ascii=False).encode()
                          ).hexdigest()


def _value(limit: Limit, check) -> str:
    if check.value is None:
        return "not measured"
    if limit.label == LABEL_EMPIRICAL:
        text = txt.pct(check.value)
        if check.interval_high is not None:
            text += f" <font size='6'>(95%: ≤ {txt.pct(check.interval_high, direction='up')})</font>"
        return text
    return txt.pct(check.value, direction="up")


class BoardPages:
    """The decision, sign-off, checklist and subgroup pages."""

    p: Profile
    levels: tuple[LevelSummary, ...]
    decision: Decision | None

    # -- page 1 ---------------------------------------------------------------------------------------------
    def board_page(self) -> list:
        p, c, d = self.p, self.p.config, self.p.dataset
        decision = self.decision
        created = p.created[:10]
        out = [self.para("Privacy risk report", "title"),
               self.para(f"DP-SGD training of {esc(c.arch)} on {esc(d.name)} · {esc(created)} · dpaudit "
                         f"{esc(p.dpaudit_version)}", "subtitle"),
               self.para("Decision for the ethics board", "h1")]
        box = [self.para(txt.decision_sentence(p, decision))]
        if decision is not None and decision.remade_note:  # a stored decision ranked by another utility
            box.append(self.para(esc(decision.remade_note), "small"))
        shows_reason = decision is not None and (decision.recommended is None or any(
            lim.label == LABEL_EMPIRICAL for lim in decision.limits))
        if shows_reason:
            # the failing limit and the noise that would meet it: the board's next step, in body text
            box.append(self.para(esc(decision.reason), "body" if decision.recommended is None else "small"))
        pu = p.privacy()  # the profile's recorded unit (image when a profile predates it)
        if pu.image_unit_hides_patients and not shows_reason:
            # per image on data whose patients have several images: the per-patient risk is said once, here,
            # where the board reads the decision (a shown reason says it already)
            box.append(self.para(f"<b>{esc(txt.image_unit_patient_risk(p))}</b>", "small"))
        out += [boxed(box, NOTE_BG), Spacer(1, 6)]
        unit = pu.describe() if not pu.image_unit_hides_patients else txt.image_unit_line(pu, "the decision above")
        out.append(self.para(f"<b>{esc(unit)}</b>. Reconstruction bounds are "
                             f"{txt.rero_unit(p, long=True)} and the realistic attack's success per "
                             f"{txt.record(p)}, at the "
                             "prior "
                             + (f"κ = 1/{txt.kappa_n(p)} (one training volume guessed blindly)." if p.config.segmentation
                                else f"κ = 1/{d.n_train} (one training image guessed blindly).")))
        out.append(self.para("Privacy budgets against the board's limits", "h2"))
        out.append(self._board_table())
        out.append(Spacer(1, 4))
        out.append(self.para(
            "✓ within: the number meets the limit; ✗ over: it exceeds it; ? inconclusive: a measured rate within "
            f"the limit whose 95% interval reaches beyond it (too few {txt.record(p)}s attacked to show the limit is "
            "met). Bounds (sound upper bounds, rounded up) "
            f"hold for any attacker; the realistic attack's success is an {txt.LABEL_REALISTIC}. "
            f"Test {txt.headline_utility(p)[1]}: {txt.LABEL_EMPIRICAL}, mean and 95% t-interval over the n seeds; "
            "“vs non-private” is the "
            "difference of means with Welch's t-test p-value.", "small"))
        if decision is not None and decision.recommended is not None:
            out.append(self.para(txt.utility_cost(p, decision.recommended)))
        out.append(self.para("The following pages hold the sign-off form, the reporting checklist, and the "
                             "evidence: bounds, the realistic attack, membership inference, utility and subgroups, "
                             "and what the guarantee does not cover.", "small"))
        out.append(page_break())
        return out

    def _board_table(self) -> Table:
        decision = self.decision
        limits = decision.limits if decision is not None else ()
        head = ["Privacy budget", "ε achieved<br/>(PLD, δ)"]
        k = self.p.privacy().records_per_patient
        head += [f"{esc(lim.short())}<br/>{lim.unit(k, txt.record(self.p))}" for lim in limits]
        # Segmentation: the first foreground class's Dice (liver for MSD Liver) in place of MCC: the decision's rank.
        key, label = txt.headline_utility(self.p)
        head += [f"Test {label}<br/>mean [95% interval]<br/>{txt.seeds_text(self.levels)}",
                 "vs non-private<br/>(Welch)", "Verdict"]
        sub = ["", txt.LABEL_UPPER] + [lim.label for lim in limits] + [txt.LABEL_EMPIRICAL, "", ""]
        rows: list[list] = [[self.cell(h, "head") for h in head], [self.cell(f"<i>{s}</i>") for s in sub]]
        style = []
        for r, lv in enumerate(self.levels, start=2):
            eps = ("∞ (no DP)" if not lv.private else
                   f"{txt.eps_up(lv.bounds.epsilon)}<br/>δ = {txt.num(lv.bounds.target_delta)}" if lv.bounds else "n/a")
            if lv.bounds is not None and lv.bounds.epsilon_patient is not None and txt.per_patient(self.p):
                # the unit the guarantee and the risk columns protect first; the per-image value named
                eps = (f"<b>{txt.eps_up(lv.bounds.epsilon_patient)} per patient</b><br/>"
                       f"{txt.eps_up(lv.bounds.epsilon)} per {txt.record(self.p)}<br/>"
                       f"δ = {txt.num(lv.bounds.target_delta)}")
            cells = [self.cell(f"<b>{txt.budget_name(self.p, lv)}</b>"), self.cell(eps)]
            checks = decision.checks_of(lv.label) if decision is not None else None
            for j, lim in enumerate(limits):
                ch = checks.checks[j] if checks is not None else None
                if ch is None:
                    cells.append(self.cell("n/a"))
                    continue
                mark = ("<b>✓ within</b>" if ch.within else "<b>? inconclusive</b>" if ch.inconclusive
                        else "<b>✗ over</b>")
                cells.append(self.cell(f"{_value(lim, ch)}<br/>{mark}"))
                style.append(("BACKGROUND", (2 + j, r), (2 + j, r),
                              WITHIN_BG if ch.within else INCONCLUSIVE_BG if ch.inconclusive else OVER_BG))
            cells.append(self.cell(txt.interval(txt.utility_values(lv, key), metric=key, with_n=False)))
            cells.append(self.cell(txt.versus_baseline(self.p, lv)))
            if not lv.private:
                verdict = "baseline<br/>(no guarantee)"
            elif decision is None:
                verdict = "–"
            elif lv.label == decision.recommended:
                verdict = "<b>recommended</b>"
                style.append(("BOX", (0, r), (-1, r), 1.2, colors.black))  # repeats the word, never replaces it
            elif lv.label in decision.within:
                verdict = "within all limits"
            elif checks is not None and all(c.within or c.inconclusive for c in checks.checks):
                verdict = f"inconclusive<br/>(too few {txt.record(self.p)}s attacked)"
            else:
                verdict = "over a limit"
            cells.append(self.cell(verdict))
            rows.append(cells)
        widths = [2.2, 1.9] + [2.3] * len(limits) + [3.0, 3.0, 2.4]
        scale = TEXT_W / (sum(widths) * cm)
        table = grid(rows, [w * cm * scale for w in widths], header_rows=2, zebra=False)
        table.setStyle(TableStyle(style))
        return table

    # -- sign-off -------------------------------------------------------------------------------------------
    def signoff_page(self) -> list:
        p, d = self.p, self.p.dataset
        decision = self.decision
        limits = "; ".join(lim.describe() for lim in decision.limits) if decision is not None else "none set"
        recommended = (decision.recommended or "none (no budget meets every limit)") if decision is not None else "–"
        reviewed = [
            ("Configuration hash", f"<font face='DejaVuSansMono' size='7'>SHA-256 {config_sha256(p)}</font>"),
            ("dpaudit version", esc(p.dpaudit_version)),
            ("Profile created", esc(p.created)),
            ("Dataset", f"{esc(d.name)}: {d.n_train} training, {d.n_val} validation, {d.n_test} test "
                        f"{txt.record(self.p)}s; classes {esc(', '.join(d.label_names) or 'n/a')}; {txt.record(self.p)}s "
                        f"{'×'.join(str(x) for x in d.image_shape)}"),
            ("Privacy budgets", esc(", ".join(txt.budget_name(p, lv) for lv in self.levels))),
            ("Board limits", esc(limits)),
            ("Recommended budget", esc(recommended)),
        ]
        t = page_table([[self.cell(f"<b>{k}</b>", "cell"), self.cell(v, "cell")] for k, v in reviewed],
                         [4.0 * cm, TEXT_W - 4.0 * cm])
        t.setStyle(TableStyle([FONT_CMD, ("LINEBELOW", (0, 0), (-1, -1), 0.4, RULE),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        box = "☐"
        form_rows = [
            ("Reviewer's role", ""), ("Name", ""), ("Date", ""),
            ("Decision", f"{box} approve the recommended budget      {box} approve another budget: ________      "
                         f"{box} reject"),
            ("Conditions and notes", ""), ("Signature", ""),
        ]
        heights = [1.1 * cm, 1.1 * cm, 1.1 * cm, 1.1 * cm, 3.2 * cm, 1.6 * cm]
        form = page_table([[self.cell(f"<b>{k}</b>", "cell"), self.cell(v, "cell")] for k, v in form_rows],
                            [4.0 * cm, TEXT_W - 4.0 * cm], row_heights=heights)
        form.setStyle(TableStyle([FONT_CMD, ("GRID", (0, 0), (-1, -1), 0.6, colors.black),
                                  ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return [self.para("Sign-off", "h1"),
                self.para("What the board reviewed. The hash identifies the exact configuration (every parameter "
                          "on the reproducibility page); a profile with any other setting has another hash. The "
                          "report holds counts only, no patient identifiers."),
                t, Spacer(1, 10),
                # The form stays on one page; the configuration the hash covers follows it.
                KeepTogether([self.para("Review", "h2"), form]), Spacer(1, 10),
                self._config_section("Configuration (the fields the hash covers)"), page_break()]

    # -- checklist ------------------------------------------------------------------------------------------
    def checklist_page(self) -> list:
        checklist: Checklist = self.p.checklist or build_checklist(self.p)
        rows = [[self.cell(h, "head") for h in ("", "Item", "This run", "From profile.json")]]
        for i, item in enumerate(checklist.items, start=1):
            rows.append([self.cell(str(i)), self.cell(f"<b>{esc(item.item)}</b>", "cell"),
                         self.cell(esc(item.value), "cell"),
                         self.cell(f"<font face='DejaVuSansMono' size='6.5'>{esc(item.source)}</font>", "cell")])
        widths = [0.6, 3.2, 8.9, 4.7]
        scale = TEXT_W / (sum(widths) * cm)
        return [self.para("Reporting checklist", "h1"),
                self.para("The items a reader needs to judge a differential-privacy claim, as the scoping review "
                          "of DP in medical deep learning asks every study to state (accountant, neighbouring "
                          "relation, privacy unit, sampler, clipping, subgroups). Every value is read from this "
                          "profile's results, none is typed by hand; the last column names the field."),
                grid(rows, [w * cm * scale for w in widths]), page_break()]

    # -- subgroups ------------------------------------------------------------------------------------------
    def subgroup_section(self) -> list:
        """Subgroup utility beside the realistic attack's success on the same subgroup, per budget."""
        groups = sorted({(s.group, s.value) for t in self.p.train for s in t.subgroups}
                        | {(g.attribute, g.value) for lv in self.levels if lv.attack is not None
                           for g in lv.attack.subgroups})
        out = [self.para("Subgroups: utility and reconstruction risk", "h2")]
        if not groups:
            out.append(self.para("The dataset provides no subgroup metadata (for example sex or age), so subgroup "
                                 "utility and risk cannot be shown. DP-SGD is known to reduce utility most for "
                                 "small subgroups; check this on data with group labels before deployment."))
            return out
        # the metric the runs were scored with: MCC for a classifier; Dice for segmentation, whose test volumes carry
        # no group labels, so no Dice per group ('–', as their test images)
        key, name = txt.headline_utility(self.p)
        head = ["Group", "Privacy budget", "Test images", f"Test {esc(name)}<br/>(mean over seeds)", "Attacked images",
                f"Recovered<br/>(SSIM > {self.p.success_ssim():g})", "Attack success<br/>[95% interval]", "Note"]
        sub = ["", "", "", txt.LABEL_EMPIRICAL, "", "", txt.LABEL_EMPIRICAL, ""]
        rows: list[list] = [[self.cell(h, "head") for h in head], [self.cell(f"<i>{s}</i>") for s in sub]]
        spans = []
        # each reason for withholding a cell once, under the table, with its marker in the rows (in the narrow
        # Note column it wrapped onto five lines in every withheld row)
        reasons: dict[str, str] = {}

        def marker(reason: str) -> str:
            return reasons.setdefault(reason, str(len(reasons) + 1))

        for attr, value in groups:
            first = len(rows)
            for lv in self.levels:
                subs = [s for t in lv.train for s in t.subgroups if (s.group, s.value) == (attr, value)]
                # a cell withheld in any seed's run is withheld for the budget: its count and metric would be
                # those few patients' results (the reason names the unit and the split)
                withheld = next((s.reason for s in subs if s.withheld), None)
                n_test = None if withheld else max((s.n for s in subs), default=None)
                mccs = [] if withheld or key != "mcc" else [s.mcc for s in subs if math.isfinite(s.mcc)]  # NaN: undefined
                att = (next((g for g in lv.attack.subgroups_of(lv.attack.strongest.decoder)
                             if (g.attribute, g.value) == (attr, value)), None) if lv.attack is not None else None)
                att_withheld = att.reason if att is not None and att.withheld else None
                small = ((n_test is not None and n_test < SMALL_TEST_GROUP)
                         or (att is not None and att.n_images is not None and att.n_images < SMALL_ATTACK_GROUP))
                marks = ",".join(marker(r) for r in (withheld, att_withheld) if r is not None)
                rows.append([
                    self.cell(esc(f"{attr} = {value}"), "cell") if len(rows) == first else self.cell(""),
                    self.cell(lv.label),
                    self.cell(esc(withheld_mark(withheld)) if withheld else "–" if n_test is None else str(n_test)),
                    self.cell("withheld" if withheld else
                              f"{sum(mccs) / len(mccs):.3f} ({len(mccs)})" if mccs else
                              "–" if not subs or key != "mcc" else UNDEFINED_METRIC),  # '–': not measured
                    self.cell("–" if att is None else esc(withheld_mark(att_withheld)) if att_withheld else
                              str(att.n_images)),
                    self.cell("–" if att is None or att_withheld else str(att.successes)),
                    self.cell("not run" if att is None else "withheld" if att_withheld else
                              f"{txt.pct(att.success_rate)} [{', '.join(percent_interval(att.ci_low, att.ci_high))}]"),
                    self.cell(f"withheld<super>{marks}</super>" if marks else "<b>⚠ small</b>" if small else "")])
            spans.append(("SPAN", (0, first), (0, len(rows) - 1)))
            spans.append(("LINEBELOW", (0, len(rows) - 1), (-1, len(rows) - 1), 0.5, RULE))
        widths = [2.8, 1.9, 1.4, 2.1, 1.5, 1.8, 3.2, 1.8]
        scale = TEXT_W / (sum(widths) * cm)
        note = (self.para("<br/>".join(f"<super>{m}</super> {esc(r)}: count and result withheld, " + (
            f"shown {COMPLEMENT_MARK}." if r == COMPLEMENT_REASON else "they would be those few patients' results.")
            for r, m in reasons.items()),
                          "small") if reasons else None)
        table = grid(rows, [w * cm * scale for w in widths], header_rows=2, zebra=False, note=note)
        table.setStyle(TableStyle([*spans, ("VALIGN", (0, 2), (0, -1), "TOP")]))
        # The note goes above the table: a long table then ends its page instead of leaving the note alone on the
        # next one (seen on the demo report).
        out += [self.para(
            (f"Test {esc(name)}: {txt.LABEL_EMPIRICAL}, mean over seeds (their number in parentheses), on the "
             "group's test images. " if key == "mcc" else
             f"Test {esc(name)}: not measured per group ('–'): the test volumes carry no group labels. ")
            + "Reconstruction: the realistic attack's strongest decoder on the group's attacked training "
            f"images ({txt.LABEL_EMPIRICAL}, a lower bound on the risk), with the exact Clopper-Pearson interval. "
            f"⚠ small: fewer than {SMALL_TEST_GROUP} test images or fewer than {SMALL_ATTACK_GROUP} attacked "
            "images; its numbers are too noisy to compare groups. Withheld: a group held by fewer than "
            f"{MIN_SUBGROUP_UNITS} patients (or the data's privacy unit) in the test split, or among the attacked "
            f"images, shows no count (&lt; {MIN_SUBGROUP_UNITS}) and no {esc(name)} or attack success: they would be those few "
            "patients' results (the reason under the table); when one value of a group is withheld, the next "
            f"smallest is withheld too ({COMPLEMENT_MARK}), since the totals would give the first by subtraction.",
            "small"), table]
        return out
