"""Render an audit to ``report.json``, ``report.html`` and PNG plots (matplotlib, Agg canvas)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._utils.jsonable import to_jsonable
from .attackers import CROSS_VALIDATED, DATA_RICH, IN_SAMPLE
from .fairness import GROUP_METRICS, FairnessResult
from .overall import OverallVerdict
from .probes import PROBE_DESCRIPTIONS
from .resampling import ZERO_TOLERANCE
from .result import SCHEMA_VERSION, SIDE_CHANNEL_ALPHA, AuditResult
from .utility import UtilityResult

__all__ = ["REPORT_FILES", "report_dict", "write_report", "plot_leakage", "plot_fairness"]

REPORT_FILES = ("report.json", "report.html", "leakage.png", "fairness.png")
_METRIC_ORDER = (
    "leakage",
    "balanced_accuracy",
    "accuracy",
    "roc_auc",
    "information_bits",
    "r2",
    "mae",
    "p_value",
)


def report_dict(
    result: AuditResult,
    fairness: Sequence[FairnessResult] = (),
    files: dict[str, Any] | None = None,
    utility: UtilityResult | None = None,
    verdicts: Sequence[OverallVerdict] = (),
) -> dict[str, Any]:
    """Everything of the report as one JSON-ready dict."""
    sides = result.side_channels()
    return to_jsonable(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": "bafo-audit-report",
            "overall": [
                {"representation": v.representation, "passed": v.passed, "hides": v.hides, "keeps": v.keeps,
                 "text": v.text}
                for v in verdicts
            ],
            "leakage": result.to_dict(),
            "side_channels": sides.drop(columns=["verdict"], errors="ignore").to_dict("records"),
            "files": files or {},
            "fairness": [f.to_dict() for f in fairness],
            "utility": utility.to_dict() if utility is not None else None,
        }
    )


# ------------------------------------------------------------------- plots
def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def plot_leakage(result: AuditResult) -> Figure:
    """One panel per attribute: leakage of every probe (and attacker) and representation with intervals."""
    leak = result.metric("leakage")
    leak = leak[~leak["representation"].isin(_side_channel_names(result))].copy()
    leak["probe"] = [_probe_label(p, a) for p, a in zip(leak["probe"], leak["attacker"])]
    attributes = list(dict.fromkeys(leak["attribute"]))
    reps = list(dict.fromkeys(leak["representation"]))
    probes = list(dict.fromkeys(leak["probe"]))
    cols = min(2, len(attributes))
    rows = int(np.ceil(len(attributes) / cols))
    fig = Figure(figsize=(6.2 * cols, 3.4 * rows), layout="constrained")
    width = 0.8 / max(len(probes), 1)
    colors = ["#9e9e9e", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, attr in enumerate(attributes):
        ax = fig.add_subplot(rows, cols, i + 1)
        sub = leak[leak["attribute"] == attr]
        for j, probe in enumerate(probes):
            part = sub[sub["probe"] == probe].set_index("representation").reindex(reps)
            x = np.arange(len(reps)) + (j - (len(probes) - 1) / 2) * width
            mean = part["mean"].to_numpy(dtype=float)
            lo = np.nan_to_num(mean - part["ci_low"].to_numpy(dtype=float), nan=0.0)
            hi = np.nan_to_num(part["ci_high"].to_numpy(dtype=float) - mean, nan=0.0)
            ax.bar(
                x,
                mean,
                width,
                yerr=np.vstack([np.maximum(lo, 0), np.maximum(hi, 0)]),
                capsize=2,
                color=colors[j % len(colors)],
                label=probe,
            )
        ax.axhline(0.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(np.arange(len(reps)), reps, rotation=15 if len(reps) > 2 else 0)
        kind = sub["kind"].iloc[0]
        ax.set_title(f"{attr} ({'R² vs training mean' if kind == 'continuous' else 'adjusted balanced accuracy'})")
        ax.set_ylim(min(-0.1, float(np.nanmin(sub["ci_low"].fillna(sub["mean"]))) - 0.05), 1.0)
        ax.set_ylabel("leakage (0 = chance)")
        if i == 0:
            ax.legend(fontsize=8, ncols=len(probes), loc="upper right")
    return fig


def plot_fairness(fairness: Sequence[FairnessResult]) -> Figure | None:
    """Disparities (demographic parity, equalized odds) per feature and representation."""
    if not fairness:
        return None
    frame = pd.concat([f.disparities for f in fairness], ignore_index=True)
    at_chance = {f.representation for f in fairness if f.overall.get("at_chance")}
    metrics = list(dict.fromkeys(frame["metric"]))
    features = list(dict.fromkeys(frame["feature"]))
    reps = list(dict.fromkeys(frame["representation"]))
    fig = Figure(figsize=(6.2 * len(metrics), 3.4), layout="constrained")
    width = 0.8 / len(reps)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for j, rep in enumerate(reps):
            part = (
                frame[(frame["metric"] == metric) & (frame["representation"] == rep)]
                .set_index("feature")
                .reindex(features)
            )
            x = np.arange(len(features)) + (j - (len(reps) - 1) / 2) * width
            mean = part["value"].to_numpy(dtype=float)
            err = np.vstack(
                [
                    np.nan_to_num(mean - part["ci_low"].to_numpy(dtype=float), nan=0.0).clip(0),
                    np.nan_to_num(part["ci_high"].to_numpy(dtype=float) - mean, nan=0.0).clip(0),
                ]
            )
            label = f"{rep} (model at chance: gaps not meaningful)" if rep in at_chance else rep
            ax.bar(x, mean, width, yerr=err, capsize=2, label=label, hatch="//" if rep in at_chance else None)
        ax.set_xticks(np.arange(len(features)), features, rotation=15)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(0, 1)
        if i == 0:
            ax.legend(fontsize=8)
    return fig


# -------------------------------------------------------------------- HTML
def _fmt(value: Any, digits: int = 3) -> str:
    """A score: fixed decimals, small values in scientific notation, rounding noise of zero as 0."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        if abs(value) < ZERO_TOLERANCE:
            return "0"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def _fmt_p(value: Any) -> str:
    """A p-value: however small it is, it is never shown as zero."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.3g}"


def _interval(mean: float, lo: float, hi: float) -> str:
    if np.isnan(lo):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _side_channel_names(result: AuditResult) -> set[str]:
    return {n for n, info in result.representations.items() if info.get("role") == "side channel"}


def _probe_label(probe: str, attacker: str) -> str:
    """A probe's name, marked when it is the data-rich attacker's."""
    return probe if attacker == CROSS_VALIDATED else f"{probe} ({attacker})"


def _detail_tables(result: AuditResult) -> str:
    parts = []
    t = result.table
    for (rep, attr), group in t.groupby(["representation", "attribute"], sort=False):
        metrics = [m for m in _METRIC_ORDER if m in set(group["metric"])]
        rows = []
        for (probe, attacker), sub in group.groupby(["probe", "attacker"], sort=False):
            by = sub.set_index("metric")
            cells = [_probe_label(probe, attacker)]
            for m in metrics:
                if m not in by.index:  # e.g. the adjacency test has a leakage and a p-value only
                    cells.append("–")
                    continue
                r = by.loc[m]
                cells.append(
                    _fmt_p(r["mean"]) if m == "p_value" else _interval(r["mean"], r["ci_low"], r["ci_high"])
                )
            rows.append(cells)
        parts.append(f"<h3>{html.escape(rep)} — {html.escape(attr)}</h3>" + _table(["probe", *metrics], rows))
    return "\n".join(parts)


def _fairness_html(fairness: Sequence[FairnessResult]) -> str:
    parts = []
    for f in fairness:
        o = f.overall
        ci = o.get("balanced_accuracy_ci") or [np.nan, np.nan]
        parts.append(
            f"<h3>{html.escape(f.representation)}: downstream model for “{html.escape(f.target)}”</h3>"
            f"<p>Cross-validated accuracy {_fmt(o['accuracy'])}, "
            f"balanced accuracy {_interval(o['balanced_accuracy'], *ci)}, "
            f"ROC-AUC {_fmt(o['roc_auc'])} on {o['n']} rows (positive rate {_fmt(o['positive_rate'])}).</p>"
        )
        closing = ""
        if o.get("at_chance"):
            parts.append(
                f"<p><b>This downstream model is at chance</b>: its balanced accuracy interval reaches 0.5, so it "
                f"learned nothing of “{html.escape(f.target)}” from {html.escape(f.representation)}. Its group "
                "gaps below describe noise, not how a working model would treat the groups; they are not "
                "evidence of fairness.</p><details><summary>gaps of a model at chance (not meaningful)</summary>"
            )
            closing = "</details>"
        d = f.disparities
        parts.append(
            _table(
                ["feature", "metric", "value [CI]", "groups"],
                [
                    [r.feature, r.metric, _interval(r.value, r.ci_low, r.ci_high), r.n_groups]
                    for r in d.itertuples()
                ],
            )
        )
        for feature, group in f.by_group.groupby("feature", sort=False):
            rows = []
            for name, sub in group.groupby("group", sort=False):
                by = sub.set_index("metric")
                cells = [name, int(by["count"].iloc[0])]
                cells += [
                    _interval(by.loc[m, "value"], by.loc[m, "ci_low"], by.loc[m, "ci_high"])
                    for m in GROUP_METRICS
                ]
                cells.append("" if by["included"].iloc[0] else "too small, not in disparities")
                rows.append(cells)
            parts.append(
                f"<h4>by {html.escape(feature)}</h4>" + _table(["group", "n", *GROUP_METRICS, "note"], rows)
            )
        parts.append(closing)
        for note in f.notes:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    return "\n".join(parts)


def _overall_html(verdicts: Sequence[OverallVerdict]) -> str:
    if not verdicts:
        return ""
    lines = "".join(
        f"<li class='{'pass' if v.passed else 'fail'}'><b>{html.escape(v.text.split(':', 1)[0])}</b>:"
        f"{html.escape(v.text.split(':', 1)[1])}</li>"
        for v in verdicts
    )
    return f"<h2>Overall verdict</h2><ul class='overall'>{lines}</ul>"


def _utility_html(utility: UtilityResult | None) -> str:
    if utility is None:
        return ""
    table = utility.shares("best")
    references = utility.references
    rows = []
    for r in table.to_dict("records"):
        cells = [r["representation"], r["target"], r["probe"], _interval(r["score"], r["ci_low"], r["ci_high"]),
                 "yes" if r["at_chance"] else "no"]
        for ref in references:
            share = r[f"share_of[{ref}]"]
            low, high = r[f"share_low[{ref}]"], r[f"share_high[{ref}]"]
            cells.append(_interval(share, low, high) if not np.isnan(share) else "–")
        rows.append(cells)
    header = ["representation", "target", "best probe", "score [CI]", "at chance",
              *[f"share of {ref}" for ref in references]]
    explained = ""
    if utility.explained:
        explained = (
            "<p class='note'>Share of each target's variance the sensitive attributes explain (the part a "
            "representation that hides them cannot be expected to keep; the <code>_residual</code> targets are "
            "the rest): " + html.escape(", ".join(f"{k} {v:.2f}" for k, v in utility.explained.items())) + "</p>"
        )
    return (
        "<h2>Utility: what a downstream model can still learn</h2><p>The same probes, folds and intervals, "
        "pointed at non-sensitive targets: the score is R² against the training mean for continuous targets and "
        "chance-adjusted balanced accuracy for categorical ones (0 = chance, 1 = perfect), best probe; the share "
        "is the score over a reference representation's (interval: the ratio of the interval ends; – where the "
        "reference carries nothing).</p>" + _table(header, rows) + explained
    )


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}
.note{color:#666;font-size:0.9em} img{max-width:100%}
.overall li{margin:0.3em 0}.pass b{color:#1a7f37}.fail b{color:#b42318}
"""


def _side_channels_html(result: AuditResult, files: dict[str, Any]) -> str:
    sides = result.side_channels()
    if sides.empty and not files:
        return ""
    parts = [
        "<h2>Side channels and metadata</h2><p>Everything in a file besides its embedding can give the labels "
        "away: ids numbered in the order of label-bearing file names, rows written in that order, extra columns. "
        "Each is probed like an embedding (linear and nearest-neighbour probes, and the adjacency test: do rows "
        "next to each other in its order share the label?). A channel <b>leaks</b> when its worst case is "
        f"significant at family-wise p &lt; {SIDE_CHANNEL_ALPHA:g} (Bonferroni over all side-channel tests), or "
        "exceeds the leakage gate; the audit then fails.</p>"
    ]
    if not sides.empty:
        rows = [
            [r.of, r.channel, r.attribute, r.probe, _interval(r.leakage, r.ci_low, r.ci_high), _fmt_p(r.family_p_value),
             "LEAKS" if r.leaks else "no", r.verdict]
            for r in sides.itertuples()
        ]
        parts.append(
            _table(["file", "channel", "attribute", "best probe", "leakage [CI]", "p (all channels)", "leaks",
                    "verdict"], rows)
        )
    for name, facts in files.items():
        parts.append(f"<h3>{html.escape(str(name))}</h3>")
        described = [
            f"embedding: {facts.get('embedding')}",
            f"labels taken from the file: {facts.get('label_columns_in_file') or 'none'}",
        ]
        if facts.get("data_fingerprint"):
            described.append(f"data fingerprint: {facts['data_fingerprint']}")
        parts.append("<ul>" + "".join(f"<li>{html.escape(str(d))}</li>" for d in described) + "</ul>")
        skipped = facts.get("skipped_columns") or []
        if skipped:
            parts.append(_table(["column not audited", "why"], [list(s) for s in skipped]))
        entries = facts.get("metadata") or []
        if entries:
            parts.append(
                _table(["footer entry", "what it reveals", "concern"],
                       [[e["key"], e["reveals"], e.get("concern") or ""] for e in entries])
            )
    return "\n".join(parts)


def _html(
    result: AuditResult,
    fairness: Sequence[FairnessResult],
    images: dict[str, bytes],
    files: dict[str, Any],
    utility: UtilityResult | None = None,
    verdicts: Sequence[OverallVerdict] = (),
) -> str:
    cfg = result.config
    k = cfg.get("n_folds", 5)
    level = round(100 * cfg.get("confidence", 0.95))
    worst = result.worst_case()
    worst = worst[~worst["representation"].isin(_side_channel_names(result))]
    data_rich = DATA_RICH in result.attackers
    verdict_rows = [
        [
            r.representation,
            r.attribute,
            _probe_label(r.probe, r.attacker),
            _interval(r.leakage, r.ci_low, r.ci_high),
            *([_fmt(r.cross_validated), _fmt(r.data_rich), _fmt(r.in_sample)] if data_rich else []),
            _fmt_p(r.p_value),
            r.verdict,
        ]
        for r in worst.itertuples()
    ]
    verdict_header = [
        "representation", "attribute", "best probe", "leakage [CI]",
        *([CROSS_VALIDATED, DATA_RICH, IN_SAMPLE] if data_rich else []), "p", "verdict",
    ]
    attackers_text = (
        " A second, <b>data-rich</b> attacker fits each probe on a labelled training export and scores it on "
        "every audited row (bootstrap interval over those rows; exact permutation p-value of its fixed "
        "predictions). A third, <b>in-sample</b> attacker attacks the training export's own rows: a concealment "
        "fitted on them equalised their class means, so the sums of the rows whose labels it knows (nine tenths "
        "at a time) point at the others' classes (the group-sum attack; bootstrap interval over those rows, "
        "p-value from rerunning the whole attack on permuted classes). The "
        "verdict takes the strongest attacker."
        if data_rich
        else ""
    )
    reps = _table(
        ["representation", "samples", "dimensions", "training-export samples"],
        [
            [name, v["n_samples"], v["dim"], v.get("n_training_samples", "–")]
            for name, v in result.representations.items()
            if v.get("role") != "side channel"
        ],
    )
    attrs = []
    for name, a in result.attributes.items():
        if a["kind"] == "categorical":
            detail = ", ".join(f"{c}: {n}" for c, n in a["class_counts"].items())
        else:
            detail = f"median {_fmt(a['median'])}"
        attrs.append([name, a["kind"], a["n"], detail])
    probes = _table(
        ["probe", "what it is"], [[p, PROBE_DESCRIPTIONS.get(p, "")] for p in cfg.get("probes", [])]
    )

    def img(key: str) -> str:
        if key not in images:
            return ""
        return f"<img alt='{key}' src='data:image/png;base64,{base64.b64encode(images[key]).decode()}'>"

    fairness_html = ""
    if fairness:
        fairness_html = (
            "<h2>Fairness of a downstream model</h2>" + img("fairness.png") + _fairness_html(fairness)
        )
    warnings_html = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Leakage audit</title><style>{_CSS}</style></head><body>
<h1>Leakage audit</h1>
<p>How well can each sensitive attribute be predicted from each representation? Each probe is
trained on {k - 1} of {k} stratified folds and scored on the fold it did not see. <b>Leakage</b>
is the chance-adjusted score (adjusted balanced accuracy for categories, R² against the training
mean for continuous attributes): 0 = chance, 1 = perfect. The headline is the worst case over
probes. Intervals ({level}%): the union of a BCa bootstrap of test rows
({cfg.get("n_bootstrap")} replicates) and a corrected t-interval over folds. p-values
({cfg.get("n_permutations")} permutations): linear probe refitted under permuted labels; other
probes per fold, Bonferroni over folds; the summary adds Bonferroni over probes.{attackers_text}</p>
{_overall_html(verdicts)}
<h2>Verdicts</h2>
{_table(verdict_header, verdict_rows)}
{_side_channels_html(result, files)}
<h2>Leakage by probe</h2>
{img("leakage.png")}
{_detail_tables(result)}
{_utility_html(utility)}
{fairness_html}
<h2>Data and probes</h2>
{reps}
{_table(["attribute", "kind", "n", "classes"], attrs)}
{probes}
{"<h2>Warnings</h2><ul>" + warnings_html + "</ul>" if warnings_html else ""}
<h2>What this audit cannot show</h2>
<p class="note">A probe-based audit bounds what these probes, trained on this much data, can
recover. It does not prove that no model could: a stronger attacker, more data, or side
information (other features, linked records) may do better. A score at chance on this sample is
compatible with leakage up to the interval's upper end.
See docs/AUDIT.md for the protocol.</p>
</body></html>
"""


def write_report(
    result: AuditResult,
    out_dir: str | os.PathLike,
    fairness: Sequence[FairnessResult] = (),
    *,
    overwrite: bool = True,
    files: dict[str, Any] | None = None,
    utility: UtilityResult | None = None,
    verdicts: Sequence[OverallVerdict] = (),
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html``, ``leakage.png`` (and ``fairness.png``).

    Each file is written to a temporary name and moved into place, so a failure
    never leaves a half-written report file.

    Parameters
    ----------
    result : AuditResult
    out_dir : str or path-like
        Created if missing.
    fairness : sequence of FairnessResult, optional
    overwrite : bool, default=True
        Replace existing report files.
    files : dict, optional
        Facts about the audited files (footer metadata, columns), shown with the side channels.
    utility : UtilityResult, optional
        The utility section (what each representation keeps of non-sensitive targets).
    verdicts : sequence of OverallVerdict, optional
        The overall verdict lines, shown first.

    Returns
    -------
    dict of str to Path
        File name to path of every file written.
    """
    from .._utils.atomic import atomic_write_path

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        taken = [name for name in REPORT_FILES if (out / name).exists()]
        if taken:
            raise FileExistsError(f"{out} already holds {taken}; pass overwrite=True to replace them")
    images = {"leakage.png": _png(plot_leakage(result))}
    fig = plot_fairness(fairness)
    if fig is not None:
        images["fairness.png"] = _png(fig)
    contents: dict[str, bytes] = {
        "report.json": (
            json.dumps(report_dict(result, fairness, files, utility, verdicts), indent=2, allow_nan=False) + "\n"
        ).encode(),
        **images,
        "report.html": _html(result, fairness, images, files or {}, utility, verdicts).encode("utf-8"),
    }
    paths = {}
    for name, data in contents.items():
        with atomic_write_path(out / name, overwrite=True) as tmp:
            tmp.write_bytes(data)
        paths[name] = out / name
    return paths
