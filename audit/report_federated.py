"""The report's federated section (``dpaudit profile --federated``): per-site privacy, bounds and utility, and the
malicious server's bin attack with and without secure aggregation. Built from a profile's ``FederatedOutcome`` with
the report's own helpers (:mod:`dpaudit.audit.report`)."""

from __future__ import annotations

import math
from typing import Any

from reportlab.platypus import Spacer

from dpaudit.audit import report_text as txt
from dpaudit.audit.profile.schema import FederatedOutcome
from dpaudit.audit.report_layout import esc, page_break
from dpaudit.identifiers import histogram_cells, histogram_note, site_test_note, withheld_mark
from dpaudit.numfmt import percent_interval


def _num(v: float | None, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def federated_page(report: Any, fed: FederatedOutcome, grid: Any, text_w: float) -> list:
    """Flowables of the federated section; ``report`` is the report builder (``para``, ``cell``)."""
    out = [page_break(), report.para("Federated learning: privacy per site and the malicious server", "h1"),
           report.para(
               f"{fed.clients} sites (partition {fed.partition}), {fed.rounds} FedAvg rounds of one local epoch. "
               f"DP unit: {fed.unit}. Every site runs DP-SGD (Opacus, Poisson sampling) with noise multiplier "
               f"σ = {fed.noise_multiplier:.4g}, chosen so that the worst site meets ε = {fed.epsilon_target:g} at "
               f"δ = {fed.target_delta:.2g}; each site's ε comes from its own sampling rate q_k = B/N_k and its "
               f"own steps (local steps × rounds it took part in). Secure aggregation does not enter the "
               f"accounting (it can only help). The reconstruction bound of a site uses its own prior κ = 1/N_k: "
               f"a smaller site has a larger prior and a larger bound.")]
    per_patient = any(s.records_per_patient > 1 for s in fed.sites)
    head = ["Site", "N_k", "N_test", "Labels", "q_k", "T_k", "ε_k per image" if per_patient else "ε_k",
            *(["k", "ε_k per patient", "ReRo per patient (κ = 1/N_k)"] if per_patient else ["ReRo (κ = 1/N_k)"]),
            "Test MCC"]
    rows = [[report.cell(h, "head") for h in head]]
    for s in fed.sites:
        patient = ([str(s.records_per_patient), "–" if s.epsilon_patient is None else txt.eps_up(s.epsilon_patient)]
                   if per_patient else [])
        rows.append([report.cell(x) for x in (
            str(s.client), str(s.n_train),
            withheld_mark(s.n_test_reason) if s.n_test_reason is not None else str(s.n_test), "/".join(histogram_cells(s.label_histogram, s.label_histogram_withheld)),
            _num(s.sampling_probability, ".3g"), _num(s.steps, "d"), "–" if s.epsilon is None else txt.eps_up(s.epsilon),
            *patient,
            txt.pct(s.rero_worst_case, direction="up") if s.rero_worst_case is not None else "–",
            "withheld*" if s.withheld else _num(s.test_mcc, ".3f"))])
    withheld = [s for s in fed.sites if s.withheld]
    # the reason once, under the table (the narrow column would wrap it on every withheld row)
    withheld_note = (f" * Withheld: {esc(withheld[0].reason or '')}; the site's test MCC would be those few "
                     "patients' results, and the spread leaves it out." if withheld else "")
    over = f" over the {len(fed.sites) - len(withheld)} published sites" if withheld else ""
    sites_note = site_test_note([s.n_test_reason for s in fed.sites])
    withheld_note += f" {esc(sites_note)}." if sites_note else ""
    labels_note = histogram_note([r for s in fed.sites for r in s.label_histogram_withheld])
    labels_note = f" Labels (training images per label) {esc(labels_note)}." if labels_note else ""
    unit_note = (" With the patient as the unit, k is the most images of one patient at the site, and ε_k per "
                 "patient and the ReRo bound are for those k images moving together (the site's DP-SGD calibrates "
                 "ε_k per image)." if per_patient else "")
    out += [Spacer(1, 4), grid(rows, [text_w / len(head)] * len(head), note=report.para(f"ε_k and ReRo: {txt.LABEL_UPPER}s (tight PLD accountant; ReRo worst case).{unit_note} Test MCC: "
                        f"{txt.LABEL_EMPIRICAL}, the global model on the site's own test split (– when that split "
                        f"holds no image, N_test 0, or one class only: MCC is not defined there). Global model on the pooled test split: MCC {fed.global_mcc:.3f}; "
                        f"spread across sites (max – min){over} {_num(fed.mcc_spread, '.3f')} "
                        f"({txt.LABEL_EMPIRICAL}).{withheld_note}{labels_note}",
                        "small"))]
    out.append(report.para("The malicious server's bin attack", "h2"))
    out.append(report.para(
        "The server inserts an imprint block of K bins (a plain linear layer and a parameter-free connection, which "
        "Opacus trains like any layer) and asks each client for one local DP-SGD step. Without secure aggregation it "
        "inverts each client's noisy update; with it, it sees only the sum over the round's clients, which holds "
        "more images (more collisions in the bins) and the noise of every client. Secure aggregation is modelled "
        "by what the server sees, not by its cryptography. A reconstruction succeeds when its SSIM with the "
        f"nearest image of the round exceeds {fed.success_ssim:g}."))
    head = ["σ", "SecAgg", "Clients", "B", "K", f"Success (SSIM > {fed.success_ssim:g})", "95% interval",
            "Mean SSIM", "Alone in bin", "n"]
    rows = [[report.cell(h, "head") for h in head]]
    for r in fed.attack:
        rows.append([report.cell(x) for x in (
            f"{r.noise_multiplier:.3g}", "yes" if r.secure_aggregation else "no", str(r.clients), str(r.batch_size),
            str(r.bins), txt.pct(r.success_rate), " – ".join(percent_interval(r.ci_low, r.ci_high)),
            f"{r.mean_ssim:.3f}", f"{txt.pct(r.alone_share)} (exp. {txt.pct(r.expected_alone_share)})",
            str(r.n_images))])
    out += [Spacer(1, 4), grid(rows, [text_w / len(head)] * len(head), note=report.para(f"Success and mean SSIM: {txt.LABEL_EMPIRICAL} (a lower bound on the risk), exact "
                        "Clopper-Pearson intervals. Alone in bin: measured share of images alone in their bin "
                        f"({txt.LABEL_EMPIRICAL}), beside (1 – 1/K)^(M – 1) for M images per view "
                        f"({txt.LABEL_ESTIMATE}): what collisions cost, as opposed to what the noise costs (success can exceed the "
                        "share alone: a bin holding two similar images may still give a picture close to one of "
                        f"them). The row "
                        f"at σ = {fed.noise_multiplier:.3g} is the federation's own noise.", "small"))]
    return out
