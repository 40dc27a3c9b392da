"""The whole job in one call: train → export latents → audit the held-out split → report.

This is what ``bafo run`` does; each step is also its own command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ..attributes import AttributeSchema
from ..data import load_id_key, pseudonymous_ids
from ..data.dataset import FaceDataset
from ..data.splits import hash_roles
from ..transformers import BAFOTransformer, load_verified_model, save_model
from ..transformers._steps import trains_with_encoder
from .export import export_latents


#: The share of the training split the concealment is fitted on and that is not shared (bafo run's default).
CALIBRATION_FRACTION = 0.7


@dataclass
class WorkflowResult:
    """Where everything went, and the audit.

    Attributes
    ----------
    model_dir, latents_path, audit_latents_path, train_latents_path, report_dir : Path
        ``train_latents_path`` is the labelled shared training rows, for the audit's attackers only.
    report : AuditReport
        ``report.worst_case()`` is the headline table.
    utility : UtilityResult or None
        What each representation keeps of the non-sensitive targets (the probe
        ladder's chance-adjusted scores, with shares of pixels' and of the
        unconcealed encoder's); ``None`` when there were no targets.
    n_calibration : int
        The calibration images the concealment was fitted on and that were not shared.
    rows_per_cell : ndarray of int or None
        The rows each attribute cell's maps were fitted on, for a concealment that moves
        each cell by its own maps (``transport``); ``None`` for one that does not. Their
        estimation error is in every shared row of the cell, and the audit's data-rich
        attacker reads it: fewer rows per cell, more leakage.
    """

    model_dir: Path
    latents_path: Path
    audit_latents_path: Path
    train_latents_path: Path
    report_dir: Path
    report: Any
    utility: Any = None
    n_calibration: int = 0
    rows_per_cell: np.ndarray | None = None

    def rows_per_cell_summary(self) -> dict[str, int | float] | None:
        """The fewest and the median of :attr:`rows_per_cell`, and the number of cells (``None`` without cells).

        Returns
        -------
        dict or None
            ``{"fewest": int, "median": float, "cells": int}``.
        """
        if self.rows_per_cell is None:
            return None
        return {"fewest": int(self.rows_per_cell.min()), "median": float(np.median(self.rows_per_cell)),
                "cells": len(self.rows_per_cell)}


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
    id_key: bytes | str | os.PathLike | None = None,
    key_table: str | os.PathLike | None = None,
    utility_targets: Callable[[FaceDataset], pd.DataFrame] | None = None,
    residual: bool = False,
    calibration_fraction: float = CALIBRATION_FRACTION,
) -> WorkflowResult:
    """Train on the training split, export, and audit the held-out split.

    Parameters
    ----------
    dataset : FaceDataset
    out_dir : path
        Receives ``model/``, ``latents.parquet`` (every image but the
        calibration ones: ids and latents only, what you would share),
        ``audit_latents.parquet`` (the held-out split with its labels, for the
        audit only), ``audit_train_latents.parquet`` (the shared training rows
        with their labels: the data-rich and in-sample attackers' data, for the
        audit only) and ``report/``. The audit probes the held-out split with
        probes cross-validated on it and probes fitted on the shared training
        rows (as anyone holding the exported training set with labels could),
        attacks the shared training rows themselves with the group-sum attack,
        and checks the shared file's side channels (ids, row order, split
        column) against every shared image's labels.
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
    id_key : bytes, path or None, default=None
        The key of the pseudonymous ids of both exports (see
        :func:`~bafo_pipeline.pipeline.export_latents`): the same image has the
        same id in both files, so the audit file joins the shared one by id.
    key_table : path, optional
        Also write id -> source file of the shared export here (0600), outside
        ``out_dir``: for the data owner only.
    utility_targets : callable, optional
        Called with the held-out split; returns its non-sensitive targets that are not
        among the dataset's labels (e.g. landmark measures of real faces:
        :func:`bafo_pipeline.data.landmarks.split_landmark_targets`), row by row.
        With the dataset's own non-sensitive labels (e.g. the synthetic faces' smile,
        tilt, ...) they are the utility targets: what each representation keeps of them
        is audited beside the leakage.
    residual : bool, default=False
        Also audit the part of each continuous target the sensitive attributes do not
        explain (see :func:`bafo_pipeline.audits.utility.audit_utility`).
    calibration_fraction : float in [0, 1), default=CALIBRATION_FRACTION (0.7)
        Share of the training split on which the concealment is fitted and which is then
        *not* shared (the calibration rows; chosen by content hash, like the split). A
        concealment fitted on the rows it exports fixes their class means, so the labels
        of most of them give the rest away (the audit's in-sample attacker,
        docs/AUDIT.md §3b); with calibration rows, every shared row was moved by maps
        fitted on other rows. The encoder still trains on the whole training split,
        without its concealment unless a step takes part in its training
        (``"trained"``): the steps are fitted once, on the calibration rows.
        0 fits the concealment on the whole training split and shares all of it. Each
        attribute cell's maps are estimated on its calibration rows, and their error is
        in every shared row of the cell: more calibration rows, less leakage, fewer images
        shared. On the demo 0.5 halved the worst leakage (docs/TRAINED_CONCEALMENT.md §13);
        on UTKFace 0.7 left about a third of 0.5's data-rich leakage (§14), hence the default.

    Returns
    -------
    WorkflowResult
    """
    from ..audits.inputs import prepare_attributes

    say = progress or (lambda text: None)
    final = Path(out_dir)
    if final.exists() and any(final.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{final} is not empty; pass overwrite=True (--overwrite) to replace its contents")
        others = sorted(p.name for p in final.iterdir() if p.name not in RUN_FOLDER_NAMES)
        if others:
            raise FileExistsError(f"{final} holds files that no run wrote ({', '.join(others[:3])}); "
                                  "overwrite replaces a run folder only: choose another folder")
    if key_table is not None and final.resolve() in Path(key_table).resolve().parents:
        raise ValueError(f"the key table {key_table} would sit inside {final}, beside the shared latents; keep it apart")
    if key_table is not None and Path(key_table).exists() and not overwrite:
        raise FileExistsError(f"{key_table} already exists; pass overwrite=True (--overwrite) to replace it")
    role = hash_roles(dataset.content_hash, test_fraction=test_fraction, seed=seed,
                      calibration_fraction=calibration_fraction)
    train, test = dataset.subset(role != "test"), dataset.subset(role == "test")
    calibration, shared = dataset.subset(role == "calibration"), dataset.subset(role != "calibration")
    shared_train = dataset.subset(role == "train")
    if len(test) < 20:
        raise ValueError(f"only {len(test)} held-out images: too few to audit; use more data")
    if calibration_fraction and (len(calibration) < 2 or len(shared_train) < 2):
        raise ValueError(
            f"calibration_fraction={calibration_fraction} leaves {len(calibration)} calibration and "
            f"{len(shared_train)} shared training images; use more data or another fraction"
        )
    fitted_on = calibration if calibration_fraction else train
    for kinds in _kinds_of_label_conditional_steps(estimator):
        _check_classes_seen_in_training(fitted_on, shared, kinds)
    options = audit_options or {}
    try:  # what the audit would refuse after training (e.g. a class with fewer held-out images than folds)
        prepare_attributes(test.attributes.reset_index(drop=True), list(dataset.sensitive), options.get("kinds"),
                           options.get("bands"), options.get("n_folds", 5))
    except ValueError as error:
        raise ValueError(f"the held-out split cannot be audited: {error}; use more data") from None

    with staged_folder(final) as out:
        report = _train_export_and_audit(
            dataset, out, estimator, say, role=role, train=train, test=test, calibration=calibration, shared=shared,
            shared_train=shared_train, seed=seed, target=target, data_info=data_info, audit_options=audit_options,
            id_key=id_key, key_table=key_table, utility_targets=utility_targets, residual=residual,
            calibration_fraction=calibration_fraction, test_fraction=test_fraction,
        )
    return WorkflowResult(final / "model", final / "latents.parquet", final / "audit_latents.parquet",
                          final / "audit_train_latents.parquet", final / "report", report, report.utility,
                          len(calibration), _rows_per_cell(estimator))


def _train_export_and_audit(dataset, out: Path, estimator, say, *, role, train, test, calibration, shared,
                            shared_train, seed, target, data_info, audit_options, id_key, key_table, utility_targets,
                            residual, calibration_fraction, test_fraction):
    """The run itself, written into ``out`` (a staging folder): returns the audit's report. ``role``: each
    image's (:func:`~bafo_pipeline.data.hash_roles`); ``train`` ... ``shared_train``: the subsets it gives."""
    from ..audits import run_audit

    say(f"training on {len(train)} images ({len(test)} held out for the audit)")
    if calibration_fraction and not _trains_with_concealment(estimator):
        # The concealment is fitted on the calibration rows below: fitting it on the training rows first (a
        # refiner's training, a decoder's fine-tuning) would be thrown away. The encoder does not depend on it.
        concealment = estimator.get_params(deep=False)["concealment"]
        try:
            estimator.set_params(concealment="none").fit(train.images, sensitive_features=train.sensitive_features)
        finally:
            estimator.set_params(concealment=concealment)
    else:
        estimator.fit(train.images, sensitive_features=train.sensitive_features)
    if calibration_fraction:
        say(f"fitting the concealment on {len(calibration)} calibration images, which are not shared")
        estimator.fit_concealment(calibration.images, sensitive_features=calibration.sensitive_features)
    split_info = {"test_fraction": test_fraction, "seed": seed, "calibration_fraction": calibration_fraction}
    model_dir = save_model(
        estimator, out / "model", overwrite=True, metadata={"split": split_info, "data": data_info or {}},
    )
    provenance = load_verified_model(model_dir).provenance()  # the saved model as it loads back: what was exported

    shown = "every image" if not calibration_fraction else f"every image but the {len(calibration)} calibration ones"
    say(f"exporting latents of {shown} (pseudonymous ids, no labels, no file names)")
    latents_path = out / "latents.parquet"
    key = load_id_key(id_key)  # one key for the three files: an image has the same id in each
    export_latents(estimator, shared, latents_path, split=role[role != "calibration"], metadata=provenance,
                   overwrite=True, id_key=key, key_table=key_table)
    audit_path = out / "audit_latents.parquet"
    export_latents(estimator, test, audit_path, include_labels=True, metadata=provenance, overwrite=True, id_key=key)
    train_path = out / "audit_train_latents.parquet"
    export_latents(estimator, shared_train, train_path, include_labels=True, metadata=provenance, overwrite=True,
                   id_key=key)

    say("auditing the held-out split (cross-validated and data-rich attackers), the shared training rows (in-sample "
        "attacker) and the shared file's side channels")
    pixels_train, pixels_test = _pixel_baseline(shared_train, test, seed)
    names = ("pixels (PCA 64)", "bafo encoder (no concealment)", "bafo (shared latents)")
    # The attributes are passed for a concealment that needs them (label-conditional transport); others ignore them.
    representations = dict(zip(names, (
        pixels_test, estimator.transform(test.images, conceal=False),
        estimator.transform(test.images, sensitive_features=test.sensitive_features),
    )))
    training = dict(zip(names, (  # the shared training rows: what an attacker could hold with labels
        pixels_train, estimator.transform(shared_train.images, conceal=False),
        estimator.transform(shared_train.images, sensitive_features=shared_train.sensitive_features),
    )))
    labels = test.attributes.reset_index(drop=True)
    if utility_targets is not None:
        say("measuring the non-sensitive utility targets of the held-out split")
        extra = utility_targets(test)
        if len(extra) != len(test):
            raise ValueError(f"utility_targets returned {len(extra)} rows for {len(test)} held-out images")
        clash = [c for c in extra.columns if c in labels.columns]
        if clash:
            raise ValueError(f"utility_targets repeats label columns {clash}")
        labels = pd.concat([labels, extra.reset_index(drop=True)], axis=1)
    targets = [c for c in labels.columns if c not in dataset.sensitive]
    report = run_audit(
        representations, labels, out / "report", attributes=list(dataset.sensitive), target=target,
        fit_representations=training, fit_labels=shared_train.attributes.reset_index(drop=True),
        side_channels=[_shared_file_channels(latents_path, names[-1])],
        side_channel_labels=shared.attributes.reset_index(drop=True).assign(
            **{_ID: pseudonymous_ids(shared.content_hash, key)}
        ),
        id_column=_ID, targets=targets, references=list(names[:2]), residual=residual, **(audit_options or {}),
    )
    return report


#: What a run folder holds (``overwrite`` replaces a folder holding nothing else).
RUN_FOLDER_NAMES = ("model", "latents.parquet", "audit_latents.parquet", "audit_train_latents.parquet", "report",
                    "skipped.json")  # (earlier releases wrote the skip listing inside)


@contextlib.contextmanager
def staged_folder(final: Path):
    """A hidden sibling folder to write a run into, put in ``final``'s place whole when the block ends.

    An earlier folder at ``final`` stays as it was until then; a run that fails or is stopped
    leaves it so, and its staging folder is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
    try:
        yield staging
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The id column of the shared file; its ids are the images' pseudonymous ids (export_latents' default).
_ID = "id"


def _rows_per_cell(estimator: BAFOTransformer) -> np.ndarray | None:
    """The fitting rows of every attribute cell of the fitted concealment's steps that have cells (``None``: none)."""
    counts = [step.cell_counts_ for step in estimator.concealment_steps_ if hasattr(step, "cell_counts_")]
    return np.concatenate(counts) if counts else None


def _trains_with_concealment(estimator: BAFOTransformer) -> bool:
    """Whether a concealment step takes part in the encoder's own training (a training hook, ``"trained"``)."""
    return any(trains_with_encoder(step) for step in estimator.concealment_steps())


def _kinds_of_label_conditional_steps(estimator: BAFOTransformer) -> list[dict | None]:
    """The attribute kinds that each concealment step needing the labels to encode will form its cells by: the
    step's own ``attribute_kinds``, else the estimator's (as the estimator hands them to its steps)."""
    if not estimator.needs_sensitive_features_to_transform:
        return []
    steps = [step for step in estimator.concealment_steps()
             if getattr(step, "needs_sensitive_features_to_transform", False)]
    own = [step.get_params(deep=False).get("attribute_kinds") for step in steps]
    return [estimator.attribute_kinds if kinds is None else kinds for kinds in own]


def _check_classes_seen_in_training(fitted_on: FaceDataset, exported: FaceDataset, kinds) -> None:
    """Before training: a label-conditional concealment moves each image by the map of its classes' cell, so an
    exported image whose combination of classes none of the images the concealment is fitted on has could not be
    exported."""
    schema = AttributeSchema.infer(fitted_on.sensitive_features, kinds=kinds)
    classes = [a.name for a in schema.attributes if a.kind != "continuous"]
    if not classes:
        return
    seen = set(fitted_on.sensitive_features[classes].itertuples(index=False, name=None))
    wanted = exported.sensitive_features[classes].itertuples(index=False, name=None)
    unseen = [combination for combination in wanted if combination not in seen]
    if unseen:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(classes, unseen[0]))
        raise ValueError(
            f"{len(unseen)} exported images have a combination of classes that none of the {len(fitted_on)} images "
            f"the concealment is fitted on has (e.g. {shown}); the label-conditional concealment has no map for "
            "them. Use more data, a smaller calibration fraction, or a concealment that does not need the labels "
            "to encode (--concealment full)"
        )


def _shared_file_channels(path: Path, name: str):
    """The side channels of the shared latents file (ids, row order, split): what it reveals besides latents."""
    import pyarrow.parquet as pq

    from ..audits.side_channels import side_channels_of_table

    table = pq.read_table(path, columns=[c for c in pq.read_schema(path).names if c != "latent"])
    return side_channels_of_table(table, source=name, id_column=_ID, embedding_columns=["latent"])


def _pixel_baseline(train: FaceDataset, test: FaceDataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels reduced by PCA fitted on the training split: the no-privacy reference (train, test)."""
    flat = lambda d: d.images.reshape(len(d), -1).astype(np.float32) / 255.0  # noqa: E731
    n_components = min(64, len(train) - 1, flat(train).shape[1])
    pca = PCA(n_components, random_state=seed).fit(flat(train))
    return pca.transform(flat(train)), pca.transform(flat(test))


def verdict_table(report) -> pd.DataFrame:
    """The headline rows: per representation and attribute, the best probe's leakage and a verdict
    (side channels apart: see ``report.leakage.side_channels()``)."""
    table = report.worst_case()
    channels = {n for n, info in report.leakage.representations.items() if info.get("role") == "side channel"}
    table = table[~table["representation"].isin(channels)]
    return table[["representation", "attribute", "probe", "attacker", "leakage", "cross_validated", "data_rich",
                  "in_sample", "verdict"]]
