"""Do the ids and the row order of an export reveal UTKFace's labels? (issue 14, item 1)

UTKFace names begin with ``age_gender_race``; bafo-pipeline 0.1 numbered the rows of an
export by their place in name order and wrote them in that order, so the id and the row
order spelled out the labels the latents conceal. This runs the in-process export as
``bafo encode`` runs it (``export_latents``: pseudonymous ids, rows in id order) over the
UTKFace folder, and ``run_workflow`` (``bafo run``) over a subset, joins the labels back
through the key table (which is how only the data owner can), and audits what an attacker
holding the file alone can read from each id and row order:

* probes that see only the rank of the id, or only the rank of the row: cross-validated
  linear, k-nearest-neighbour and gradient-boosted probes of each attribute, chance-adjusted
  (0 = chance), with permutation p-values (``bafo_pipeline.audits.audit_leakage``);
* the issue's attack: 5% of the rows labelled, every other row given its nearest labelled
  neighbour's labels in id order (or row order);
* Spearman's correlation of age with each order, and how often neighbouring rows share a
  gender;
* the audit's own check of the whole file (``run_audit_files``: the id, the row order and every
  other column audited as side channels, ``report.leakage.side_channels()``).

A file "leaks" when any channel's permutation p-value, Bonferroni-adjusted over the file's
channels and attributes, is below 0.05. Rows are written in id order, so in the new
exports the id-rank and row-rank channels coincide.

The same is measured for 0.1's scheme (ids = name-order positions, rows in that order) as a
positive control: the benchmark must see that leak. The latents themselves are not audited
here (``--model`` defaults to a throw-away model trained on synthetic faces): ids and order
do not depend on the model. Prints one JSON object naming the machine.

    python benchmarks/export_ids_utkface.py [--utkface ../shared/data/utkface/UTKFace] [--out result.json]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents  # noqa: E402
from bafo_pipeline.audits import audit_leakage, run_audit_files  # noqa: E402
from bafo_pipeline.data import load_id_key, parse_utkface_name, scan_source  # noqa: E402
from bafo_pipeline.data.sources import load_source  # noqa: E402
from bafo_pipeline.pipeline.workflow import run_workflow  # noqa: E402

ATTRIBUTES = ("age", "gender", "ethnicity")
PERMUTATIONS = 1000
ALPHA = 0.05  # family-wise, per file


def _labels_of(sources: pd.Series) -> pd.DataFrame:
    return pd.DataFrame([parse_utkface_name(Path(s).name) for s in sources], index=sources.index)


def _neighbour_attack(order_values: np.ndarray, labels: pd.DataFrame, rng: np.random.Generator,
                      fraction: float = 0.05) -> dict:
    """Label ``fraction`` of the rows; give every other row its nearest labelled neighbour's labels (in that order)."""
    n = len(labels)
    rank = np.argsort(np.argsort(order_values, kind="stable"), kind="stable")
    known = np.zeros(n, dtype=bool)
    known[rng.choice(n, max(2, int(fraction * n)), replace=False)] = True
    known_ranks = np.sort(rank[known])
    owner = {r: i for i, r in zip(np.flatnonzero(known), rank[known])}
    unknown = np.flatnonzero(~known)
    at = np.clip(np.searchsorted(known_ranks, rank[unknown]), 1, len(known_ranks) - 1)
    left, right = known_ranks[at - 1], known_ranks[at]
    nearest = np.where(np.abs(rank[unknown] - left) <= np.abs(right - rank[unknown]), left, right)
    guess = labels.iloc[[owner[r] for r in nearest]].reset_index(drop=True)
    truth = labels.iloc[unknown].reset_index(drop=True)
    result = {}
    for name in ("gender", "ethnicity"):
        majority = truth[name].value_counts(normalize=True).iloc[0]
        result[f"{name}_accuracy"] = round(float((guess[name] == truth[name]).mean()), 4)
        result[f"{name}_majority_baseline"] = round(float(majority), 4)
    median = labels["age"].iloc[np.flatnonzero(known)].median()
    result["age_mae_years"] = round(float(np.abs(guess["age"] - truth["age"]).mean()), 2)
    result["age_mae_median_baseline"] = round(float(np.abs(median - truth["age"]).mean()), 2)
    return result


def _audit_orders(ids: np.ndarray, labels: pd.DataFrame, seed: int, probes: tuple[str, ...]) -> dict:
    """What an attacker reads from the id alone and from the row position alone (rows as written)."""
    rows = np.arange(len(ids), dtype=np.float64)
    id_rank = np.argsort(np.argsort(ids, kind="stable"), kind="stable").astype(np.float64)
    representations = {"id rank": id_rank[:, None] / len(ids), "row rank": rows[:, None] / len(ids)}
    audit = audit_leakage(representations, labels.reset_index(drop=True), attributes=list(ATTRIBUTES),
                          probes=("prior", *probes), n_bootstrap=200, n_permutations=PERMUTATIONS, random_state=seed)
    worst = audit.worst_case(with_verdict=False)
    tests = len(worst)  # every channel x attribute of this file: Bonferroni over them
    channels = {}
    for row in worst.to_dict("records"):
        p_value = float(row["p_value"])
        channels.setdefault(row["representation"], {})[row["attribute"]] = {
            "probe": row["probe"], "leakage": round(float(row["leakage"]), 4),
            "ci": [round(float(row["ci_low"]), 4), round(float(row["ci_high"]), 4)],
            "p_value": float(f"{p_value:.3g}"), "family_p_value": float(f"{min(1.0, p_value * tests):.3g}"),
        }
    leaking = sorted(f"{channel}: {attribute}" for channel, found in channels.items()
                     for attribute, r in found.items() if r["family_p_value"] < ALPHA)
    rng = np.random.default_rng(seed)
    gender = labels["gender"].to_numpy()
    return {
        "leaks": bool(leaking),
        "leaking_channels": leaking,
        "probes_of_each_channel": channels,
        "spearman_age_id": round(float(spearmanr(ids, labels["age"]).statistic), 4),
        "spearman_age_row": round(float(spearmanr(rows, labels["age"]).statistic), 4),
        "neighbouring_rows_same_gender": round(float((gender[1:] == gender[:-1]).mean()), 4),
        "neighbour_attack_by_id": _neighbour_attack(ids, labels.reset_index(drop=True), rng),
        "neighbour_attack_by_row": _neighbour_attack(rows, labels.reset_index(drop=True), rng),
    }


def _side_channels(path: Path, ids: np.ndarray, labels: pd.DataFrame, seed: int) -> dict:
    """The audit's own check of the whole file (``run_audit_files``: every column and the row order as side
    channels), with the labels joined by id as only the data owner can."""
    labels_file = path.with_suffix(".labels.csv")
    labels.reset_index(drop=True).assign(id=ids).to_csv(labels_file, index=False)
    report = run_audit_files([path], labels_file, attributes=list(ATTRIBUTES), probes=("prior", "linear"),
                             random_state=seed)
    sides = report.leakage.side_channels()
    return {
        "leaks": bool(len(sides) and sides["leaks"].any()),
        "channels": [
            {"channel": r["channel"], "attribute": r["attribute"], "probe": r["probe"],
             "leakage": round(float(r["leakage"]), 4), "ci": [round(float(r["ci_low"]), 4), round(float(r["ci_high"]), 4)],
             "family_p_value": float(f"{r['family_p_value']:.3g}"), "leaks": bool(r["leaks"])}
            for r in sides.to_dict("records")
        ],
    }


def _written(path: Path, key_table: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The file's ids in written order, and each row's labels joined through the key table (the owner's view)."""
    table = read_latents(path)
    keys = pd.read_csv(key_table).set_index("id")
    return table.ids, _labels_of(keys.loc[table.ids, "source"])


def _model(seed: int) -> BAFOTransformer:
    faces = make_synthetic_faces(300, image_size=56, random_state=seed)
    model = BAFOTransformer(latent_dim=8, widths=(8, 16), epochs=1, decoder_epochs=0, concealment="none",
                            random_state=seed)
    return model.fit(faces.images, sensitive_features=faces.sensitive_features)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", default="../shared/data/utkface/UTKFace", help="the UTKFace folder")
    parser.add_argument("--limit", type=int, default=None, help="encode only this many images (a smoke test)")
    parser.add_argument("--run-limit", type=int, default=1500, help="images for the bafo run variant (it trains)")
    parser.add_argument("--probes", default="linear,gbdt", help="probes besides the prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    probes = tuple(p for p in args.probes.split(",") if p)
    work = Path(tempfile.mkdtemp(prefix="export_ids_"))
    key_file = work / "id.key"  # the data owner's key: random, but drawn from --seed so that a run can be repeated
    key_file.write_text(hashlib.sha256(f"export_ids_utkface {args.seed}".encode()).hexdigest() + "\n")
    key_file.chmod(0o600)
    load_id_key(key_file)
    started = time.perf_counter()
    source, scan_report = scan_source(utkface=args.utkface, limit=args.limit)
    variants = {}

    # bafo encode: export_latents as the CLI calls it.
    model = _model(args.seed)
    encoded = work / "latents.parquet"
    export_seconds = time.perf_counter()
    export_latents(model, source, encoded, id_key=key_file, key_table=work / "encode_keys.csv")
    export_seconds = time.perf_counter() - export_seconds
    ids, labels = _written(encoded, work / "encode_keys.csv")

    # 0.1's scheme, the positive control: the same rows, ids = positions in name order, rows in that order.
    names = pd.read_csv(work / "encode_keys.csv").set_index("id").loc[ids, "source"].map(lambda p: Path(p).name)
    name_order = np.argsort(names.to_numpy(), kind="stable")
    old_file = work / "name_order.parquet"
    table = pq.read_table(encoded).take(pa.array(name_order))
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", pa.array(np.arange(len(ids)))),
                   old_file)
    old_labels = labels.iloc[name_order]
    variants["0.1: name-order positions"] = {
        "rows": len(ids), **_audit_orders(np.arange(len(ids)), old_labels, args.seed, probes),
        "audit_side_channels": _side_channels(old_file, np.arange(len(ids)), old_labels, args.seed),
    }
    variants["bafo encode: pseudonymous ids"] = {
        "rows": len(ids), **_audit_orders(ids, labels, args.seed, probes),
        "audit_side_channels": _side_channels(encoded, ids, labels, args.seed),
    }

    # bafo run: the workflow's two files (a subset: it trains a model first).
    dataset = load_source(utkface=args.utkface, limit=args.run_limit)
    estimator = BAFOTransformer(latent_dim=8, widths=(8, 16), epochs=1, decoder_epochs=0, concealment="none",
                                random_state=args.seed)
    result = run_workflow(dataset, work / "run", estimator, seed=args.seed, id_key=key_file,
                          key_table=work / "run_keys.csv", audit_options={"probes": ("prior", "linear")})
    for name, path in (("latents.parquet", result.latents_path), ("audit_latents.parquet", result.audit_latents_path)):
        ids, labels = _written(path, work / "run_keys.csv")
        variants[f"bafo run ({args.run_limit} images): {name}"] = {
            "rows": len(ids), **_audit_orders(ids, labels, args.seed, probes),
            "audit_side_channels": _side_channels(path, ids, labels, args.seed),
        }
    own = result.report.leakage.side_channels()
    variants[f"bafo run ({args.run_limit} images): its own verdict"] = {
        "side_channels_leak": bool(result.report.leakage.side_channels_leak()),
        "tests": len(own),
        "leaking": [{"channel": r["channel"], "attribute": r["attribute"], "probe": r["probe"],
                     "leakage": round(float(r["leakage"]), 4), "p_value": float(f"{r['p_value']:.3g}"),
                     "family_p_value": float(f"{r['family_p_value']:.3g}")}
                    for r in own.to_dict("records") if r["leaks"]],
    }
    report = {
        "benchmark": "export_ids_utkface",
        "machine": machine(),
        "source": {"folder": "UTKFace", "scan": scan_report.summary(), "rows": len(source), "limit": args.limit},
        "settings": {"probes": ["prior", *probes], "n_folds": 5, "n_bootstrap": 200, "n_permutations": PERMUTATIONS,
                     "leaks_when": f"a channel's Bonferroni-adjusted permutation p-value < {ALPHA} (per file)",
                     "attack_labelled_fraction": 0.05, "seed": args.seed},
        "export_seconds": round(export_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "variants": variants,
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
