"""The leakage audit: cross-validated probes per attribute, scored with intervals and p-values."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from . import metrics as M
from .._utils.progress import Progress
from ..attributes import quantile_bin_edges
from .attackers import CROSS_VALIDATED, DATA_RICH, IN_SAMPLE
from .group_sums import group_sum_attack, group_sum_permutation_test
from .inputs import Attribute, align_by_id, check_representations, encode_like, prepare_attributes
from .permutation import per_fold_test, refit_linear_test
from .probes import PROBES, make_probe
from .resampling import bca_interval, bootstrap_weights, chunks, jackknife_weights, snap_zero
from .result import SCHEMA_VERSION, TABLE_COLUMNS, AuditResult

__all__ = ["ATTACKERS", "audit_leakage", "CATEGORICAL_METRICS", "CONTINUOUS_METRICS"]

#: The attackers: probes cross-validated on the audited rows; probes fitted on a labelled training
#: export and scored on the audited (held-out) rows; and the group-sum attack on the training export's
#: own rows, each fold with the labels of the others (:mod:`.group_sums`).
ATTACKERS = (CROSS_VALIDATED, DATA_RICH, IN_SAMPLE)
#: The in-sample attacker's "probe".
GROUP_SUMS = "group_sums"

CATEGORICAL_METRICS = (
    "balanced_accuracy",
    "adjusted_balanced_accuracy",
    "accuracy",
    "roc_auc",
    "information_bits",
)
CONTINUOUS_METRICS = ("r2", "mae")
# Attainable range of each score; intervals are clipped to it.
_RANGE = {
    "balanced_accuracy": (0.0, 1.0),
    "adjusted_balanced_accuracy": (-np.inf, 1.0),
    "accuracy": (0.0, 1.0),
    "roc_auc": (0.0, 1.0),
    "information_bits": (-np.inf, np.inf),
    "r2": (-np.inf, 1.0),
    "mae": (0.0, np.inf),
}
# The chance-adjusted score that defines "leakage" for each kind of attribute.
LEAKAGE_METRIC = {"categorical": "adjusted_balanced_accuracy", "continuous": "r2"}
# Delete-a-group jackknife groups per test fold, for the BCa acceleration.
_JACKKNIFE_GROUPS = 20


def _folds(attribute: Attribute, n_folds: int, random_state: int) -> list[np.ndarray]:
    """Test-fold positions (into ``attribute.rows``), stratified by class or by quantile bin."""
    if attribute.kind == "categorical":
        strata = attribute.values
    else:
        n_bins = int(max(1, min(10, len(attribute.values) // (2 * n_folds))))
        strata = np.digitize(attribute.values, quantile_bin_edges(attribute.values, n_bins))
        counts = np.bincount(strata)
        if counts[counts > 0].min() < n_folds:  # heavy ties: fall back to one stratum
            strata = np.zeros_like(strata)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    return [test for _, test in splitter.split(np.zeros((len(strata), 1)), strata)]


def _fit_and_score(
    name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    attribute: Attribute,
    *,
    random_state: int,
    device: str,
    mlp_params,
    gbdt_params,
) -> tuple[dict[str, np.ndarray], float, int | None]:
    """Fit one probe and return its held-out outputs, the seconds it took and its iterations."""
    task = "classification" if attribute.kind == "categorical" else "regression"
    probe = make_probe(
        name, task, random_state=random_state, device=device, mlp_params=mlp_params, gbdt_params=gbdt_params
    )
    start = time.perf_counter()
    probe.fit(X_train, y_train)
    if task == "classification":
        P = np.zeros((len(y_test), attribute.n_classes))
        P[:, np.asarray(probe.classes_, dtype=np.int64)] = probe.predict_proba(X_test)
        prior = np.bincount(y_train, minlength=attribute.n_classes) / len(y_train)
        # A class the training rows lack (possible for the data-rich attacker) is never decided for.
        out = {"y": y_test, "P": P, "prior": np.maximum(prior, M.PROBA_FLOOR)}
    else:
        pred = np.asarray(probe.predict(X_test), dtype=np.float64)
        # R² is a squared error, which the training mean minimises: against the median (which minimises
        # the absolute error) a probe that learnt nothing but the mean would score above 0 on skewed targets.
        out = {"y": y_test, "pred": pred, "baseline": np.full(len(y_test), float(np.mean(y_train)))}
    seconds = time.perf_counter() - start
    iterations = None
    if hasattr(probe, "n_epochs_"):
        iterations = int(probe.n_epochs_)
    elif hasattr(probe, "n_iter_"):
        iterations = int(np.max(probe.n_iter_))
    return out, seconds, iterations


def _run_probe(
    name: str,
    Z: np.ndarray,
    attribute: Attribute,
    folds: list[np.ndarray],
    *,
    random_state: int,
    device: str,
    mlp_params,
    gbdt_params,
    advance: Callable[[str], None],
    label: str,
) -> tuple[list[dict[str, np.ndarray]], float, list[int]]:
    """Fit the probe on every training fold; return held-out outputs per fold and seconds."""
    X_all = Z[attribute.rows]
    y_all = attribute.values
    outputs: list[dict[str, np.ndarray]] = []
    seconds = 0.0
    epochs: list[int] = []
    in_test = np.zeros(len(y_all), dtype=bool)
    for k, test in enumerate(folds):
        in_test[:] = False
        in_test[test] = True
        train = np.flatnonzero(~in_test)
        out, took, iterations = _fit_and_score(
            name, X_all[train], y_all[train], X_all[test], y_all[test], attribute,
            random_state=random_state + k, device=device, mlp_params=mlp_params, gbdt_params=gbdt_params,
        )
        seconds += took
        if iterations is not None:
            epochs.append(iterations)
        outputs.append(out)
        advance(f"{label}: {name} fold {k + 1}/{len(folds)}")
    return outputs, seconds, epochs


def _scores(kind: str, out: dict[str, np.ndarray], W: np.ndarray) -> dict[str, np.ndarray]:
    if kind == "categorical":
        return M.classification_scores(out["y"], out["P"], out["prior"], W)
    return M.regression_scores(out["y"], out["pred"], out["baseline"], W)


def _p_value(
    probe: str,
    Z: np.ndarray,
    attribute: Attribute,
    folds: list[np.ndarray],
    outputs: list[dict[str, np.ndarray]],
    n_permutations: int,
    rng: np.random.Generator,
    attacker: str = CROSS_VALIDATED,
) -> float:
    """Permutation p-value of "no leakage" for one probe (NaN for the prior baseline).

    The data-rich attacker's probes never saw the audited labels, so permuting those
    labels against their fixed predictions is an exact test.
    """
    if probe == "prior" or n_permutations == 0:
        return float("nan")
    categorical = attribute.kind == "categorical"
    if probe == "linear" and attacker == CROSS_VALIDATED:
        _, p = refit_linear_test(
            Z[attribute.rows],
            attribute.values,
            folds,
            categorical=categorical,
            n_classes=attribute.n_classes,
            n_permutations=n_permutations,
            rng=rng,
        )
        return p
    return per_fold_test(outputs, categorical=categorical, n_permutations=n_permutations, rng=rng)


def _fold_interval(mean: float, std: float, k: int, confidence: float) -> tuple[float, float]:
    """t-interval of a K-fold mean with the Nadeau-Bengio correction.

    Fold scores are correlated (their training sets overlap), so the naive
    ``std / sqrt(K)`` is too small; the corrected variance is
    ``std² (1/K + n_test/n_train)`` with ``n_test/n_train = 1/(K-1)``.
    """
    if not np.isfinite(std):
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, k - 1) * std * np.sqrt(1.0 / k + 1.0 / (k - 1))
    return mean - half, mean + half


def _summarise(
    kind: str,
    outputs: list[dict[str, np.ndarray]],
    *,
    n_bootstrap: int,
    confidence: float,
    seed: Sequence[int],
    p_value: float,
) -> list[dict[str, Any]]:
    """Fold mean, fold std, bootstrap interval and permutation p-value of every metric.

    Every statistic is the mean over folds of a per-fold score. The interval is
    the union of two: a BCa bootstrap of that mean (test rows resampled within
    folds, probes held fixed: test-sample noise; the acceleration from a
    delete-a-group jackknife of test rows) and a corrected t-interval from the
    fold-to-fold spread (which also carries training-set noise). The union
    always contains the estimate. The p-value comes from :mod:`.permutation`.
    With a single "fold" (the data-rich attacker: probes fitted on a separate
    training export) only the bootstrap interval is given.
    """
    names = CATEGORICAL_METRICS if kind == "categorical" else CONTINUOUS_METRICS
    per_fold = [_scores(kind, out, np.ones((1, len(out["y"])))) for out in outputs]
    point = {m: np.array([float(s[m][0]) for s in per_fold]) for m in names}
    total = {m: float(np.sum(point[m])) for m in names}

    boot = {m: np.zeros(n_bootstrap) for m in names}
    jack: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for k, out in enumerate(outputs):
        m_rows = len(out["y"])
        rng = np.random.default_rng([*seed, k])
        done = 0
        for size in chunks(n_bootstrap, m_rows):
            scores = _scores(kind, out, bootstrap_weights(m_rows, size, rng))
            for m in names:
                boot[m][done : done + size] += scores[m] / len(outputs)
            done += size
        if n_bootstrap:
            left_out = _scores(kind, out, jackknife_weights(m_rows, _JACKKNIFE_GROUPS, rng))
            for m in names:
                jack[m].append((total[m] - point[m][k] + left_out[m]) / len(outputs))

    leak_name = LEAKAGE_METRIC[kind]
    rows = []
    for m in [*names]:
        mean = float(snap_zero(np.mean(point[m])))
        std = float(snap_zero(np.std(point[m], ddof=1))) if len(outputs) > 1 else float("nan")
        if n_bootstrap:
            lo, hi = bca_interval(snap_zero(boot[m]), mean, snap_zero(np.concatenate(jack[m])), confidence)
        else:
            lo, hi = mean, mean
        t_lo, t_hi = _fold_interval(mean, std, len(outputs), confidence) if len(outputs) > 1 else (lo, hi)
        low, high = _RANGE[m]
        rows.append(
            {
                "metric": m,
                "mean": mean,
                "ci_low": float(np.clip(np.fmin(np.fmin(lo, t_lo), mean), low, high)),
                "ci_high": float(np.clip(np.fmax(np.fmax(hi, t_hi), mean), low, high)),
                "std": std,
            }
        )
    leak = dict(next(r for r in rows if r["metric"] == leak_name), metric="leakage")
    rows.insert(0, leak)
    rows.append({"metric": "p_value", "mean": p_value, "ci_low": np.nan, "ci_high": np.nan, "std": np.nan})
    return rows


def _record(rows, timings, rep_name, attribute, probe, attacker, summary, seconds, scoring, epochs) -> None:
    for r in summary:
        rows.append(
            {
                "representation": rep_name,
                "attribute": attribute.name,
                "kind": attribute.kind,
                "probe": probe,
                "attacker": attacker,
                **r,
                "n": len(attribute.rows),
            }
        )
    timings.append(
        {
            "representation": rep_name,
            "attribute": attribute.name,
            "probe": probe,
            "attacker": attacker,
            "fit_seconds": seconds,
            "scoring_seconds": scoring,
            "iterations_per_fold": epochs,
        }
    )


def _audit_in_sample(rows, timings, rep_name, latents, trained: Attribute, *, n_bootstrap, n_permutations,
                     confidence, seed) -> None:
    """The group-sum attack on the training export's own rows, summarised like a data-rich probe (one "fold"
    of every row: bootstrap interval), with a p-value from rerunning the whole attack on permuted classes."""
    start = time.perf_counter()
    out = group_sum_attack(latents, trained.values, trained.n_classes, random_state=seed[0])
    seconds = time.perf_counter() - start
    p_value = (
        group_sum_permutation_test(latents, trained.values, trained.n_classes, n_permutations=n_permutations,
                                   rng=np.random.default_rng(seed), random_state=seed[0])
        if n_permutations else float("nan")
    )
    summary = _summarise("categorical", [out], n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
                         p_value=p_value)
    _record(rows, timings, rep_name, trained, GROUP_SUMS, IN_SAMPLE, summary, seconds,
            time.perf_counter() - start - seconds, [])


def _training_export(
    fit_representations,
    fit_labels: pd.DataFrame | None,
    reps: Mapping[str, np.ndarray],
    attrs: Sequence[Attribute],
    *,
    id_column: str | None,
    audited_ids: np.ndarray | None,
    collected: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, Attribute]]:
    """Validate the data-rich attacker's training rows; encode their labels like the audited attributes.

    Where both sides come with ids, they must not share any: a probe scored on rows it was fitted on reads
    them in-sample and overstates the leakage.
    """
    if fit_representations is None and fit_labels is None:
        return {}, {}
    if fit_representations is None or fit_labels is None:
        raise ValueError("the data-rich attacker needs both fit_representations and fit_labels")
    if not isinstance(fit_labels, pd.DataFrame):
        raise TypeError(f"fit_labels must be a pandas DataFrame, got {type(fit_labels).__name__}")
    if not isinstance(fit_representations, Mapping):
        if len(reps) != 1:
            raise ValueError(
                f"{len(reps)} representations are audited; give fit_representations as a mapping naming them"
            )
        fit_representations = {next(iter(reps)): fit_representations}
    unknown = [name for name in fit_representations if str(name) not in reps]
    if unknown:
        raise ValueError(f"fit_representations names {unknown}, which are not audited (audited: {list(reps)})")
    if any(isinstance(v, tuple) for v in fit_representations.values()):
        if id_column is None:
            raise ValueError("fit_representations given as (ids, array) pairs need id_column")
        fit_representations, fit_labels, fit_ids = align_by_id(fit_representations, fit_labels, id_column, collected)
        if audited_ids is not None:
            shared = pd.Index(fit_ids).astype(str).intersection(pd.Index(audited_ids).astype(str))
            if len(shared):
                raise ValueError(
                    f"the training export and the audited rows share {len(shared)} ids (first: {shared[0]!r}): the "
                    "data-rich probes would be scored on rows they were fitted on; audit held-out rows only"
                )
    try:
        fit = check_representations(fit_representations)
    except ValueError as error:
        raise ValueError(f"training export: {error}") from None
    n = len(next(iter(fit.values())))
    if len(fit_labels) != n:
        raise ValueError(f"fit_labels have {len(fit_labels)} rows but fit_representations have {n}")
    for name, Z in fit.items():
        if Z.shape[1] != reps[name].shape[1]:
            raise ValueError(
                f"representation {name!r}: the training export has {Z.shape[1]} dimensions, the audited one "
                f"{reps[name].shape[1]}"
            )
    fit_labels = fit_labels.reset_index(drop=True)
    encoded = {a.name: encode_like(a, fit_labels, collected) for a in attrs}
    for name, attribute in encoded.items():
        if len(attribute.rows) < 2:
            raise ValueError(f"training export: attribute {name!r} has {len(attribute.rows)} labelled rows")
        if attribute.kind == "categorical" and len(np.unique(attribute.values)) < 2:
            raise ValueError(f"training export: attribute {name!r} has a single class")
    return fit, encoded


def audit_leakage(
    representations: np.ndarray | Mapping[str, Any],
    labels: pd.DataFrame,
    *,
    attributes: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    bands: Mapping[str, Sequence[float]] | None = None,
    id_column: str | None = None,
    fit_representations: np.ndarray | Mapping[str, Any] | None = None,
    fit_labels: pd.DataFrame | None = None,
    probes: Sequence[str] = PROBES,
    n_folds: int = 5,
    n_bootstrap: int = 500,
    n_permutations: int = 500,
    confidence: float = 0.95,
    random_state: int = 0,
    device: str = "auto",
    mlp_params: Mapping[str, Any] | None = None,
    gbdt_params: Mapping[str, Any] | None = None,
    n_threads: int | None = 1,
    progress: Any = None,
    verbose: bool = False,
) -> AuditResult:
    """Measure how well each attribute can be predicted from each representation.

    For every representation, attribute and probe, the probe is trained on K-1
    stratified folds and scored on the held-out fold, K times (the
    *cross-validated* attacker). Scores are averaged over folds, with a bootstrap
    interval (test rows resampled within folds) and a permutation p-value.

    With ``fit_representations`` and ``fit_labels`` the *data-rich* attacker is
    audited too: each probe is fitted on all the rows of a labelled training
    export and scored on every audited row, as anyone holding the exported
    training set with its labels could. So is the *in-sample* attacker, on the
    training export's own rows, for every categorical attribute: a concealment
    fitted on those rows equalised their class means, so the labels of most of
    them tell the rest apart (the group-sum attack, :mod:`.group_sums`; each
    tenth of the rows attacked with the other nine tenths' labels). The table
    tells the attackers apart (column ``attacker``) and the worst case takes
    the strongest.

    Parameters
    ----------
    representations : array-like of shape (n, d), or mapping of str to array-like or to (ids, array)
        Embeddings to audit side by side (raw pixels, latents, erased latents ...).
        Arrays are matched to ``labels`` by row; ``(ids, array)`` pairs are matched by
        ``id_column``. Audit data should not include the encoder's training data.
    labels : DataFrame
        Attribute values, one row per sample.
    attributes : sequence of str, optional
        Columns to audit; default: whichever of ``age``, ``gender``, ``ethnicity`` exist.
    kinds : mapping, optional
        ``{name: "continuous" | "categorical"}`` overriding the inferred kind
        (numeric with more than 20 distinct values is continuous).
    bands : mapping, optional
        Band edges per continuous attribute, also audited as a categorical
        ``<name>_band``; default ``{"age": (20, 40, 60)}``; ``{}`` disables.
    id_column : str, optional
        Column of ``labels`` holding the ids of ``(ids, array)`` pairs.
    fit_representations : array-like or mapping, optional
        The same representations of *other* rows (the training split), for the
        data-rich attacker: an array (when one representation is audited), or a
        mapping whose names are among those of ``representations`` (arrays, or
        ``(ids, array)`` pairs matched to ``fit_labels`` by ``id_column``).
        Representations without one are audited by the cross-validated attacker only.
    fit_labels : DataFrame, optional
        The attributes of the ``fit_representations`` rows; required with them.
    probes : sequence of str, default=("prior", "linear", "mlp", "gbdt", "quadratic", "knn")
        The attack probes (:data:`~bafo_pipeline.audits.PROBES`).
    n_folds : int, default=5
    n_bootstrap : int, default=500
        Bootstrap replicates for intervals (0: no intervals).
    n_permutations : int, default=500
        Label permutations for p-values (0: no p-values).
    confidence : float, default=0.95
    random_state : int, default=0
        Seeds folds, probes and resampling; folds are the same for every
        representation, so they are compared on identical splits.
    device : str, default="auto"
        Device for the MLP probe (CUDA when present).
    mlp_params, gbdt_params : mapping, optional
        Overrides for the MLP (:class:`TorchMLPProbe`) and gradient-boosting probes.
    n_threads : int or None, default=1
        Thread limit (OpenMP and BLAS pools, torch's included) for the whole audit;
        ``None`` leaves the libraries' defaults. The probes are small: threads gain
        little, and OpenMP pools on a shared machine can slow them 10 to 50-fold.
    progress : callable or tqdm-like, optional
        Called as ``progress(done, total, description)`` after each probe fit, or a
        tqdm bar that gets ``total`` and ``update(1)``.
    verbose : bool, default=False
        Show a progress bar when no ``progress`` is given.

    Returns
    -------
    AuditResult

    Raises
    ------
    ValueError
        On mismatched ids or row counts, missing label columns, single-class
        attributes, classes smaller than ``n_folds``, non-finite embeddings or bad
        parameters.
    """
    collected: list[str] = []
    if not isinstance(labels, pd.DataFrame):
        raise TypeError(f"labels must be a pandas DataFrame, got {type(labels).__name__}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0 or n_permutations < 0:
        raise ValueError("n_bootstrap and n_permutations must be >= 0")
    probes = list(probes)
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes or len(set(probes)) != len(probes):
        raise ValueError(f"probes must be distinct names from {PROBES}, got {probes}")

    paired = isinstance(representations, Mapping) and any(
        isinstance(v, tuple) for v in representations.values()
    )
    if paired:
        if id_column is None:
            raise ValueError("representations given as (ids, array) pairs need id_column")
        representations, labels, audited_ids = align_by_id(representations, labels, id_column, collected)
    else:
        audited_ids = None
    reps = check_representations(representations)
    n = len(next(iter(reps.values())))
    if len(labels) != n:
        raise ValueError(
            f"labels have {len(labels)} rows but the representations have {n}; "
            "align them, or pass (ids, array) pairs with id_column"
        )
    labels = labels.reset_index(drop=True)
    if id_column is not None and attributes is not None and id_column in attributes:
        raise ValueError(f"the id column {id_column!r} cannot be audited as an attribute")
    attrs = prepare_attributes(labels, attributes, kinds, bands, n_folds, collected)
    fit_reps, fit_attrs = _training_export(
        fit_representations, fit_labels, reps, attrs, id_column=id_column, audited_ids=audited_ids,
        collected=collected,
    )

    folds = {a.name: _folds(a, n_folds, random_state) for a in attrs}
    n_categorical = sum(a.kind == "categorical" for a in attrs)
    n_fits = len(reps) * len(attrs) * len(probes) * n_folds + len(fit_reps) * (len(attrs) * len(probes) + n_categorical)
    tracker = Progress(progress, n_fits, verbose=verbose)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    started = time.perf_counter()
    limits = threadpool_limits(limits=n_threads)
    try:
        for rep_name, Z in reps.items():
            for i_attr, attribute in enumerate(attrs):
                for probe in probes:
                    outputs, seconds, epochs = _run_probe(
                        probe,
                        Z,
                        attribute,
                        folds[attribute.name],
                        random_state=random_state,
                        device=device,
                        mlp_params=mlp_params,
                        gbdt_params=gbdt_params,
                        advance=tracker.advance,
                        label=f"{rep_name}/{attribute.name}",
                    )
                    start = time.perf_counter()
                    p_value = _p_value(
                        probe,
                        Z,
                        attribute,
                        folds[attribute.name],
                        outputs,
                        n_permutations,
                        np.random.default_rng([random_state, i_attr, 1]),
                    )
                    summary = _summarise(
                        attribute.kind,
                        outputs,
                        n_bootstrap=n_bootstrap,
                        confidence=confidence,
                        seed=(random_state, i_attr),
                        p_value=p_value,
                    )
                    scoring = time.perf_counter() - start
                    _record(rows, timings, rep_name, attribute, probe, CROSS_VALIDATED, summary, seconds,
                            scoring, epochs)
                if rep_name not in fit_reps:
                    continue
                trained = fit_attrs[attribute.name]
                X_fit, X_test = fit_reps[rep_name][trained.rows], Z[attribute.rows]
                for probe in probes:
                    out, seconds, iterations = _fit_and_score(
                        probe, X_fit, trained.values, X_test, attribute.values, attribute,
                        random_state=random_state, device=device, mlp_params=mlp_params, gbdt_params=gbdt_params,
                    )
                    tracker.advance(f"{rep_name}/{attribute.name}: {probe} on the training export")
                    start = time.perf_counter()
                    p_value = _p_value(
                        probe, Z, attribute, [], [out], n_permutations,
                        np.random.default_rng([random_state, i_attr, 2]), attacker=DATA_RICH,
                    )
                    summary = _summarise(
                        attribute.kind, [out], n_bootstrap=n_bootstrap, confidence=confidence,
                        seed=(random_state, i_attr, 2), p_value=p_value,
                    )
                    _record(rows, timings, rep_name, attribute, probe, DATA_RICH, summary, seconds,
                            time.perf_counter() - start, [] if iterations is None else [iterations])
                if attribute.kind == "categorical":
                    _audit_in_sample(rows, timings, rep_name, fit_reps[rep_name][trained.rows], trained,
                                     n_bootstrap=n_bootstrap, n_permutations=n_permutations, confidence=confidence,
                                     seed=(random_state, i_attr, 3))
                    tracker.advance(f"{rep_name}/{attribute.name}: group sums of the training export")
    finally:
        limits.restore_original_limits()
        tracker.close()

    from .._utils.device import resolve_device

    config = {
        "n_folds": n_folds,
        "n_bootstrap": n_bootstrap,
        "n_permutations": n_permutations,
        "confidence": confidence,
        "random_state": random_state,
        "probes": probes,
        "n_threads": n_threads,
        "mlp_device": str(resolve_device(device)) if "mlp" in probes else None,
        "leakage_metric": dict(LEAKAGE_METRIC),
        "attackers": [CROSS_VALIDATED, *([DATA_RICH, IN_SAMPLE] if fit_reps else [])],
        "total_seconds": time.perf_counter() - started,
    }
    described = {}
    for name, Z in reps.items():
        described[name] = {"n_samples": int(Z.shape[0]), "dim": int(Z.shape[1])}
        if name in fit_reps:
            described[name]["n_training_samples"] = int(fit_reps[name].shape[0])
    return AuditResult(
        table=pd.DataFrame(rows, columns=TABLE_COLUMNS),
        representations=described,
        attributes={a.name: a.summary() for a in attrs},
        config=config,
        timings=timings,
        warnings=collected,
        schema_version=SCHEMA_VERSION,
    )
