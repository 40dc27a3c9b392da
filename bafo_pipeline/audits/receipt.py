"""Audit receipts: an audit's verdict stored in the footer of the latents file it vouches for.

``bafo audit --attach`` writes a receipt into each audited Parquet file (atomically;
the rows are untouched, see :mod:`bafo_pipeline.io.footer`), and ``bafo verify FILE
--max-leakage X`` lets a downstream job refuse data whose receipt is

* **missing** (never audited, or audited without ``--attach``),
* **stale** (the rows changed since, or the model fingerprint the file records is
  not the one audited), or
* **failing** (some attribute's worst-case leakage above ``X``, or a side channel
  that leaks).

A receipt holds no row and no label value: per attribute the worst case over probes
and attackers with its interval and p-value, the probes and settings, the side
channels' verdicts, the data and model fingerprints, and when it was written.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._utils.jsonable import to_jsonable
from .._version import package_version
from ..io.footer import data_fingerprint, read_footer_metadata, set_footer_metadata
from .result import SIDE_CHANNEL_ALPHA

__all__ = [
    "RECEIPT_KEY",
    "ReceiptCheck",
    "VERIFY_EXIT_CODES",
    "attach_receipt",
    "check_receipt",
    "make_receipt",
    "read_receipt",
]

RECEIPT_KEY = "bafo_audit_receipt"
RECEIPT_KIND = "bafo-audit-receipt"
RECEIPT_VERSION = 1
#: ``bafo verify``'s exit status for each outcome (2 is an unreadable file or a usage error).
VERIFY_EXIT_CODES = {"ok": 0, "failing": 1, "missing": 3, "stale": 4}


def _model_facts(footer: dict[str, str]) -> dict[str, Any]:
    try:
        meta = json.loads(footer.get("bafo", "{}"))
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    return {key: meta.get(key) for key in ("model_fingerprint", "model_verified", "concealment")}


def make_receipt(
    report: Any,
    representation: str,
    path: str | os.PathLike,
    *,
    fingerprint: str,
    threshold: float | None = None,
    side_channel_alpha: float = SIDE_CHANNEL_ALPHA,
    training_export: str | None = None,
) -> dict[str, Any]:
    """The receipt of one audited file.

    Parameters
    ----------
    report : AuditReport
        The audit's result.
    representation : str
        The name the file's embedding has in the report.
    path : str or path-like
        The file (its footer gives the model facts).
    fingerprint : str
        The file's :func:`~bafo_pipeline.io.footer.data_fingerprint` when it was read for the audit.
    threshold : float, optional
        The ``--max-leakage`` the audit was gated with.
    side_channel_alpha : float, default=SIDE_CHANNEL_ALPHA (0.001)
        Family-wise level at which a side channel leaks (:meth:`AuditResult.side_channels`).
    training_export : str, optional
        The data fingerprint of the data-rich attacker's training export.

    Returns
    -------
    dict
        JSON-ready.
    """
    leakage = report.leakage
    worst = leakage.worst_case(with_verdict=False)
    worst = worst[worst["representation"] == representation]
    sides = leakage.side_channels(alpha=side_channel_alpha, threshold=threshold)
    sides = sides[sides["of"] == representation] if len(sides) else sides
    rows = [
        {
            key: row[key]
            for key in ("attribute", "kind", "probe", "attacker", "leakage", "ci_low", "ci_high", "p_value")
        }
        for row in worst.to_dict("records")
    ]
    channels = [
        {"channel": r["channel"], "attribute": r["attribute"], "probe": r["probe"], "leakage": r["leakage"],
         "p_value": r["p_value"], "family_p_value": r["family_p_value"], "leaks": bool(r["leaks"])}
        for r in sides.to_dict("records")
    ]
    largest = float(worst["leakage"].max()) if len(worst) else float("nan")
    config = leakage.config
    receipt = {
        "kind": RECEIPT_KIND,
        "version": RECEIPT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": package_version(),
        "data_fingerprint": fingerprint,
        **_model_facts(read_footer_metadata(path)),
        "representation": representation,
        "audited_rows": int(leakage.representations.get(representation, {}).get("n_samples", 0)),
        "training_export": training_export,
        "attackers": leakage.attackers,
        "probes": list(config.get("probes", [])),
        "settings": {key: config.get(key) for key in ("n_folds", "n_bootstrap", "n_permutations", "confidence",
                                                      "random_state")},
        "worst_case": rows,
        "max_leakage": largest,
        "side_channels": channels,
        "side_channels_leak": any(c["leaks"] for c in channels),
        "side_channel_alpha": side_channel_alpha,
        "gate": {
            "max_leakage": threshold,
            "passed": None if threshold is None else bool(
                not leakage.failed(threshold, representation, side_channel_alpha=side_channel_alpha)
            ),
        },
        "warnings": list(leakage.warnings),
    }
    return to_jsonable(receipt)


def attach_receipt(path: str | os.PathLike, receipt: dict[str, Any]) -> Path:
    """Write ``receipt`` into the footer of ``path``, atomically, leaving the rows as they are.

    Raises
    ------
    ValueError
        If the file's data changed since it was audited (its fingerprint is no longer
        the receipt's); nothing is written then.
    """
    path = Path(path)
    current = data_fingerprint(path)
    if current != receipt.get("data_fingerprint"):
        raise ValueError(f"{path} changed while it was being audited; audit it again before attaching a receipt")
    set_footer_metadata(path, {RECEIPT_KEY: json.dumps(receipt, allow_nan=False, sort_keys=True)})
    return path


def read_receipt(path: str | os.PathLike) -> dict[str, Any] | None:
    """The receipt in a file's footer, or None when it has none.

    Parameters
    ----------
    path : path-like
        A Parquet file; only its footer is read.

    Returns
    -------
    dict or None
        The receipt as :func:`attach_receipt` wrote it (verdict per attribute,
        probes, attackers, data and model fingerprints, date), unchecked: use
        :func:`check_receipt` to know whether it still holds.

    Raises
    ------
    ValueError
        When the footer holds a receipt that is not valid JSON or not a receipt.
    """
    text = read_footer_metadata(path).get(RECEIPT_KEY)
    if text is None:
        return None
    try:
        receipt = json.loads(text)
    except ValueError:
        raise ValueError(f"{path}: the audit receipt is not valid JSON") from None
    if not isinstance(receipt, dict) or receipt.get("kind") != RECEIPT_KIND:
        raise ValueError(f"{path}: the {RECEIPT_KEY!r} footer entry is not a bafo audit receipt")
    if receipt.get("version") != RECEIPT_VERSION:
        raise ValueError(f"{path}: audit receipt version {receipt.get('version')!r} is not one this bafo reads")
    return receipt


@dataclass
class ReceiptCheck:
    """The outcome of :func:`check_receipt`.

    Attributes
    ----------
    status : {"ok", "failing", "missing", "stale"}
    reasons : list of str
        One sentence per problem found.
    receipt : dict or None
    """

    status: str
    reasons: list[str] = field(default_factory=list)
    receipt: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """``bafo verify``'s exit status (:data:`VERIFY_EXIT_CODES`)."""
        return VERIFY_EXIT_CODES[self.status]


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def check_receipt(
    path: str | os.PathLike, max_leakage: float | None = None, *, bound: str = "estimate"
) -> ReceiptCheck:
    """Check a file's receipt: present, fresh, and passing.

    Parameters
    ----------
    path : str or path-like
    max_leakage : float, optional
        Largest tolerated worst-case leakage of any attribute; without it, the gate the
        audit itself recorded (if any) decides. Side channels that leak always fail.
    bound : {"estimate", "upper"}, default="estimate"
        Compare ``max_leakage`` with each worst case's estimate, or with its interval's
        upper end (the largest leakage the audit could not rule out).

    Returns
    -------
    ReceiptCheck
    """
    if bound not in ("estimate", "upper"):
        raise ValueError(f"bound must be 'estimate' or 'upper', got {bound!r}")
    receipt = read_receipt(path)
    if receipt is None:
        return ReceiptCheck("missing", [f"{path} carries no audit receipt; run bafo audit --attach on it"])
    stale = []
    if data_fingerprint(path) != receipt.get("data_fingerprint"):
        stale.append(f"the rows of {path} changed after the audit ({receipt.get('created_at')})")
    model = _model_facts(read_footer_metadata(path))["model_fingerprint"]
    if model != receipt.get("model_fingerprint"):
        stale.append(f"{path} names model {model} but the audit saw {receipt.get('model_fingerprint')}")
    if stale:
        return ReceiptCheck("stale", stale, receipt)
    failing = []
    if max_leakage is not None:
        key = "leakage" if bound == "estimate" else "ci_high"
        for row in receipt.get("worst_case", []):
            value = _number(row.get(key))
            if math.isnan(value) or value > max_leakage:
                failing.append(
                    f"{row.get('attribute')}: worst-case leakage {value:.3f}"
                    f"{' (upper end of its interval)' if bound == 'upper' else ''} exceeds {max_leakage}"
                )
    elif receipt.get("gate", {}).get("passed") is False:
        failing.append(f"the audit's own gate (max leakage {receipt['gate'].get('max_leakage')}) failed")
    for channel in receipt.get("side_channels", []):
        too_much = max_leakage is not None and _number(channel.get("leakage")) > max_leakage
        if channel.get("leaks") or too_much:
            failing.append(
                f"side channel {channel.get('channel')} reveals {channel.get('attribute')} "
                f"(leakage {_number(channel.get('leakage')):.3f}, p = {_number(channel.get('family_p_value')):.3g})"
            )
    return ReceiptCheck("failing" if failing else "ok", failing, receipt)
