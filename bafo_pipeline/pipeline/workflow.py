"""The whole job in one call: train → export latents → audit the held-out split → report.

This is what ``bafo run`` does; each step is also its own command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ..data.dataset import FaceDataset
from ..data.splits import hash_split
from ..transformers import BAFOTransformer, model_fingerprint, save_model
from .export import export_latents


@dataclass
class WorkflowResult:
    """Where everything went, and the audit.

    Attributes
    ----------
    model_dir, latents_path, audit_latents_path, report_dir : Path
    report : AuditReport
        ``report.worst_case()`` is the headline table.
    utility : DataFrame or None
        How well a linear probe predicts each non-sensitive attribute from each
        representation (chance-adjusted; what a downstream model can still use).
    """

    model_dir: Path
    latents_path: Path
    audit_latents_path: Path
    report_dir: Path
    report: Any
    utility: pd.DataFrame | None = None


def run_workflow(
    dataset: FaceDataset,
    out_dir: str | os.PathLike,
    estimator: BAFOTransformer,
    *,
    test_fraction: float = 0.15,
    seed: int = 0,
    target: str | None = None,
    data_info: dict | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    audit_options: dict | None = None,
) -> WorkflowResult:
    """Train on the training split, export, and audit the held-out split.

    Parameters
    ----------
    dataset : FaceDataset
    out_dir : path
        Receives ``model/``, ``latents.parquet`` (every image: ids and
        latents only, what you would share), ``audit_latents.parquet`` (the
        held-out split with its labels, for the audit only) and ``report/``.
    estimator : BAFOTransformer
        Unfitted; its parameters decide the model and the concealment.
    test_fraction, seed : split by content hash.
    target : str, optional
        A non-sensitive attribute for the downstream fairness report (e.g.
        ``"smile"`` on synthetic faces).
    data_info : dict, optional
        Provenance stored with the model.
    overwrite : bool, default=False
    progress : callable, optional
        Called with a line of text as each step starts.
    audit_options : dict, optional
        Passed to :func:`bafo_pipeline.audits.run_audit`.

    Returns
    -------
    WorkflowResult
    """
    from ..audits import run_audit

    say = progress or (lambda text: None)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace its contents")
    out.mkdir(parents=True, exist_ok=True)
    train, test = dataset.split(test_fraction=test_fraction, seed=seed)
    if len(test) < 20:
        raise ValueError(f"only {len(test)} held-out images: too few to audit; use more data")

    say(f"training on {len(train)} images ({len(test)} held out for the audit)")
    estimator.fit(train.images, sensitive_features=train.sensitive_features)
    model_dir = save_model(
        estimator, out / "model", overwrite=True,
        metadata={"split": {"test_fraction": test_fraction, "seed": seed}, "data": data_info or {}},
    )
    provenance = {"model_fingerprint": model_fingerprint(model_dir)}

    say("exporting latents of every image (no labels, no file names)")
    is_test = hash_split(dataset.content_hash, test_fraction=test_fraction, seed=seed)
    split = np.where(is_test, "test", "train")
    latents_path = out / "latents.parquet"
    export_latents(estimator, dataset, latents_path, split=split, metadata=provenance, overwrite=True)
    audit_path = out / "audit_latents.parquet"
    export_latents(
        estimator, test, audit_path, include_labels=True, ids=np.flatnonzero(is_test), metadata=provenance, overwrite=True
    )

    say("auditing the held-out split")
    representations = {
        "pixels (PCA 64)": _pixel_baseline(train, test, seed),
        "bafo encoder (no concealment)": estimator.transform(test.images, conceal=False),
        "bafo (shared latents)": estimator.transform(test.images),
    }
    labels = test.attributes.reset_index(drop=True)
    report = run_audit(
        representations, labels, out / "report", attributes=list(dataset.sensitive), target=target,
        **(audit_options or {}),
    )
    kept = [c for c in labels.columns if c not in dataset.sensitive]
    utility = None
    if kept:
        from ..audits import audit_leakage

        utility = audit_leakage(
            representations, labels, attributes=kept, probes=("prior", "linear"), bands={},
            n_bootstrap=0, n_permutations=0, random_state=seed,
        ).worst_case(with_verdict=False)[["representation", "attribute", "leakage"]]
    return WorkflowResult(model_dir, latents_path, audit_path, out / "report", report, utility)


def _pixel_baseline(train: FaceDataset, test: FaceDataset, seed: int) -> np.ndarray:
    """Raw pixels reduced by PCA fitted on the training split: the no-privacy reference."""
    flat = lambda d: d.images.reshape(len(d), -1).astype(np.float32) / 255.0  # noqa: E731
    n_components = min(64, len(train) - 1, flat(train).shape[1])
    return PCA(n_components, random_state=seed).fit(flat(train)).transform(flat(test))


def verdict_table(report) -> pd.DataFrame:
    """The headline rows: per representation and attribute, the best probe's leakage and a verdict."""
    table = report.worst_case()
    return table[["representation", "attribute", "probe", "leakage", "verdict"]]
