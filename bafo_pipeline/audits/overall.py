"""The overall verdict of an audit: one line per representation, leakage and utility together.

A representation passes when it hides the sensitive attributes (no attribute's worst case
above the leakage gate, or, without a gate, no significant leakage at all; no side channel
of its file leaking) and keeps what a downstream user needs (every non-sensitive target
kept at ``min_share`` or more of the reference representation's score; without a
reference, every target above chance). Either half alone is easy: noise hides everything,
raw pixels keep everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .result import SIDE_CHANNEL_ALPHA, AuditResult
from .utility import UtilityResult
from .verdict import is_significant

__all__ = ["OverallVerdict", "overall_verdicts"]


@dataclass(frozen=True)
class OverallVerdict:
    """The overall verdict on one representation.

    Attributes
    ----------
    representation : str
    hides : bool
        The leakage half passed.
    keeps : bool or None
        The utility half passed; ``None`` when no utility targets were audited (the
        verdict is then on leakage only, and says so).
    text : str
        One plain-language line.
    """

    representation: str
    hides: bool
    keeps: bool | None
    text: str

    @property
    def passed(self) -> bool:
        """The leakage half passed, and the utility half too where it was audited."""
        return self.hides and self.keeps is not False


def overall_verdicts(
    leakage: AuditResult,
    utility: UtilityResult | None = None,
    *,
    representations: Sequence[str] | None = None,
    max_leakage: float | None = None,
    min_share: float = 0.8,
    alpha: float = 0.05,
    side_channel_alpha: float = SIDE_CHANNEL_ALPHA,
) -> list[OverallVerdict]:
    """One overall verdict per audited representation.

    Parameters
    ----------
    leakage : AuditResult
    utility : UtilityResult, optional
        Its last reference is the one shares are judged against (list references from
        the farthest to the closest, e.g. pixels, then the unconcealed encoder).
    representations : sequence of str, optional
        Which to judge; default: every embedding audited that is not a utility reference
        (all of them when that leaves none).
    max_leakage : float, optional
        The leakage gate; without it, any significant leakage fails.
    min_share : float, default=0.8
        Share of the reference's score each target must keep.
    alpha : float, default=0.05
        Significance level for the embeddings' leakage without a gate.
    side_channel_alpha : float, default=SIDE_CHANNEL_ALPHA (0.001)
        Family-wise level at which a side channel leaks (:meth:`AuditResult.side_channels`).

    Returns
    -------
    list of OverallVerdict
    """
    worst = leakage.worst_case(alpha=alpha, with_verdict=False)
    sides = leakage.side_channels(alpha=side_channel_alpha, threshold=max_leakage)
    embeddings = [n for n, info in leakage.representations.items() if info.get("role") != "side channel"]
    references = list(utility.references) if utility is not None else []
    if representations is None:
        representations = [n for n in embeddings if n not in references] or embeddings
    unknown = [n for n in representations if n not in embeddings]
    if unknown:
        raise ValueError(f"no audited representation named {unknown}; have {embeddings}")
    shares = utility.shares("best") if utility is not None else None
    out = []
    for name in representations:
        hides, leak_text = _leakage_half(worst[worst["representation"] == name], max_leakage, alpha)
        if len(sides):
            leaking = sides[(sides["of"] == name) & sides["leaks"]]
            if len(leaking):
                hides = False
                leak_text += "; its file's " + ", ".join(dict.fromkeys(leaking["channel"])) + " reveal labels"
        keeps, keep_text = (None, "utility not audited (no non-sensitive targets given)")
        if shares is not None:
            keeps, keep_text = _utility_half(shares, name, references, min_share)
        word = "FAIL" if not hides or keeps is False else "PASS" if keeps else "PASS (leakage only)"
        out.append(OverallVerdict(name, hides, keeps, f"{word}: {name} {leak_text}; {keep_text}."))
    return out


def _leakage_half(rows: pd.DataFrame, max_leakage: float | None, alpha: float) -> tuple[bool, str]:
    if max_leakage is not None:
        over = rows[rows["leakage"] > max_leakage]
        if len(over):
            return False, "leaks " + ", ".join(
                f"{r.attribute} {r.leakage:.2f} > {max_leakage:g}" for r in over.itertuples()
            )
        top = rows.loc[rows["leakage"].idxmax()] if len(rows) else None
        worst = f" (worst {top['attribute']} {top['leakage']:.2f})" if top is not None else ""
        return True, f"hides the sensitive attributes: every worst case ≤ {max_leakage:g}{worst}"
    significant = [r for r in rows.to_dict("records") if is_significant(r, alpha=alpha)]
    if significant:
        return False, "leaks " + ", ".join(
            f"{r['attribute']} {r['leakage']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" for r in significant
        )
    return True, "hides the sensitive attributes: no significant leakage"


def _utility_half(shares: pd.DataFrame, name: str, references: list[str], min_share: float) -> tuple[bool, str]:
    rows = shares[shares["representation"] == name].reset_index(drop=True)
    if rows.empty:
        return False, "no utility measured"
    if references and name not in references:
        reference = references[-1]
        ref = shares[shares["representation"] == reference].set_index("target")
        # Judged where the reference itself carries the target (its interval above 0, when there is one).
        ref_low = rows["target"].map(ref["ci_low"]).to_numpy(dtype=float)
        share = rows[f"share_of[{reference}]"].to_numpy(dtype=float)
        judged = ~np.isnan(share) & (np.isnan(ref_low) | (ref_low > 0))
        short = judged & (share < min_share)
        kept = int(judged.sum() - short.sum())
        text = f"keeps {kept} of {int(judged.sum())} targets at ≥ {min_share:g} of {reference}"
        if short.any():
            text += "; loses " + ", ".join(
                f"{r.target} ({s:.2f} of it{', at chance' if r.at_chance else ''})"
                for r, s in zip(rows[short].itertuples(), share[short])
            )
        if (~judged).any():
            text += "; not judged (the reference carries nothing): " + ", ".join(rows.loc[~judged, "target"])
        return bool(judged.any() and not short.any()), text
    at_chance = rows[rows["at_chance"]]
    text = f"{len(rows) - len(at_chance)} of {len(rows)} targets above chance"
    if len(at_chance):
        text += "; at chance: " + ", ".join(at_chance["target"])
    return at_chance.empty, text
