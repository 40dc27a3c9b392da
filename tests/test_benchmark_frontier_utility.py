"""benchmarks/leakage_frontier.py's utility columns: per-variant shares of 'none', the table, the leakage-vs-utility panel."""

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bafo_pipeline.audits.utility import audit_utility


@pytest.fixture(scope="module")
def frontier(benchmark_module):
    with benchmark_module("leakage_frontier") as module:
        yield module


@pytest.fixture(scope="module")
def shares(frontier):
    """Synthetic targets; 'none' keeps them all, 'kept' nearly all, 'erased' none."""
    rng = np.random.default_rng(0)
    n = 300
    targets = pd.DataFrame({name: rng.normal(size=n) for name in frontier.UTILITY_JUDGED["synthetic"]})
    signal = targets.to_numpy()
    representations = {
        frontier.PIXELS: signal + 0.1 * rng.normal(size=signal.shape),
        "none": signal + 0.2 * rng.normal(size=signal.shape),
        "kept": signal + 0.25 * rng.normal(size=signal.shape),
        "erased": rng.normal(size=signal.shape),
    }
    result = audit_utility(representations, targets, references=[frontier.PIXELS, "none"],
                           probes=("prior", "linear"), n_bootstrap=100, random_state=0)
    return result.shares("best")


def test_entries_give_each_variants_least_share_of_none(frontier, shares):
    judged = frontier.UTILITY_JUDGED["synthetic"]
    kept = frontier.utility_entry(shares, "kept", judged)
    erased = frontier.utility_entry(shares, "erased", judged)
    assert set(kept["targets"]) == set(judged) and kept["judged"] == list(judged)
    assert 0.9 < kept["min_share_of_none"] <= 1.0
    assert all(entry["at_chance"] for entry in erased["targets"].values())
    assert erased["min_share_of_none"] is None or erased["min_share_of_none"] < 0.1
    assert frontier.utility_entry(shares, "none", judged)["min_share_of_none"] == pytest.approx(1.0)


def _result(frontier, shares):
    judged = frontier.UTILITY_JUDGED["synthetic"]
    variants = []
    for name, gender in (("none", 0.8), ("kept", 0.7), ("erased", 0.5)):
        variants.append({
            "name": name, "labels_at_transform": False,
            "utility": frontier.utility_entry(shares, name, judged),
            "audit": {"gender": {"worst": gender, "ci_low": gender - 0.05, "ci_high": gender + 0.05}},
        })
    return {
        "variants": variants, "data": {"source": "synthetic"}, "utility_explained_by_sensitive": {},
        "utility_references": {n: frontier.utility_entry(shares, n, judged) for n in (frontier.PIXELS, "none")},
    }


def _table(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The utility table's header cells and its rows, keyed by their first cell."""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return cells[0], {row[0]: row[1:] for row in cells[1:]}


def test_table_has_a_row_per_target_and_a_column_per_variant(frontier, shares):
    lines = frontier.utility_lines(_result(frontier, shares))
    assert "## Utility kept" in lines
    header, rows = _table(lines)
    assert header == ["target", "*pixels (PCA 64)*", "*none*", "kept", "erased"]
    judged = frontier.UTILITY_JUDGED["synthetic"]
    assert all(f"**{t}**" in rows for t in judged)  # judged targets in bold
    kept, erased = header.index("kept") - 1, header.index("erased") - 1
    for t in judged:
        entry = frontier.utility_entry(shares, "kept", judged)["targets"][t]
        assert rows[f"**{t}**"][kept] == f"{entry['score']:.3f} ({entry['share_of_none']:.2f})"
        assert rows[f"**{t}**"][erased].endswith("·")  # at chance
    goal = rows[f"all bold targets ≥ {frontier.UTILITY_GOAL_SHARE_OF_NONE} of `none`"]
    assert goal == ["–", "–", "yes", "**no**"]
    least = rows["least share of `none`, bold targets"]
    assert float(least[kept]) == pytest.approx(frontier.utility_entry(shares, "kept", judged)["min_share_of_none"], abs=0.005)
    assert frontier.utility_lines({"variants": [{"name": "none", "labels_at_transform": False}],
                                   "data": {"source": "synthetic"}}) == []  # runs without utility render as before


def test_table_leaves_out_shares_of_a_reference_at_chance(frontier, shares):
    result = _result(frontier, shares)
    target = frontier.UTILITY_JUDGED["synthetic"][0]
    result["utility_references"]["none"]["targets"][target]["at_chance"] = True
    _, rows = _table(frontier.utility_lines(result))
    assert all("(" not in cell for cell in rows[f"**{target}**"])  # a ratio of noise is not shown
    other = frontier.UTILITY_JUDGED["synthetic"][1]
    assert "(" in rows[f"**{other}**"][2]


def test_split_check_tells_the_training_split_from_all_images(frontier):
    from bafo_pipeline.attributes import AttributeSchema

    rng = np.random.default_rng(0)

    class Split:
        def __init__(self, ages):
            self.sensitive_features = pd.DataFrame({"age": ages})

    train, test = Split(rng.integers(1, 90, 400).astype(float)), Split(rng.integers(1, 90, 80).astype(float))

    class Model:
        def __init__(self, ages):
            self.schema_ = AttributeSchema.infer(pd.DataFrame({"age": ages}))

    fitted_on_train = frontier.split_check(Model(train.sensitive_features["age"]), train, test)
    assert fitted_on_train["matches_train"] and " equal " in fitted_on_train["verdict"]
    everything = pd.concat([train.sensitive_features["age"], test.sensitive_features["age"]])
    saw_test = frontier.split_check(Model(everything), train, test)
    assert not saw_test["matches_train"] and "DO NOT equal" in saw_test["verdict"]


def test_model_settings_name_the_defaults_they_differ_from(frontier):
    data = {"model_params": {"epochs": 4, "batch_size": 32, "learning_rate": 0.002},
            "model_params_defaults": {"epochs": 20, "batch_size": 32, "learning_rate": 0.002}}
    text = frontier.model_params_text(data)
    assert "epochs 4" in text and "not the estimator's defaults** (epochs 20)" in text
    assert "batch_size 32" in text and "batch_size 32)" not in text.split("defaults")[1]
    same = {"model_params": {"epochs": 20}, "model_params_defaults": {"epochs": 20}}
    assert "not the estimator's defaults" not in frontier.model_params_text(same)


def test_panel_plots_leakage_against_utility(frontier, shares):
    result = _result(frontier, shares)
    ax = Figure().add_subplot()
    import matplotlib.pyplot as plt

    frontier._utility_panel(ax, [v for v in result["variants"] if v["utility"]["min_share_of_none"] is not None],
                            plt.get_cmap("tab10"))
    plotted = sorted(float(line.get_xdata()[0]) for line in ax.lines if len(line.get_xdata()) == 1
                     and line.get_linestyle() == "None")
    assert plotted and plotted[-1] == pytest.approx(1.0)  # 'none' keeps all of itself
    assert "leakage vs utility" in ax.get_title()


def test_merge_from_a_side_by_side_run_adds_only_new_variants(frontier):
    def run(names, value, date):
        return {"data": {"source": "utkface"}, "audit_config": {"n_folds": 5}, "date_utc": date, "command": "c",
                "machine": {}, "steps_seconds": {}, "wall_seconds": 1.0,
                "variants": [{"name": n, "value": value} for n in names],
                "audit_table": [{"representation": n, "value": value} for n in names]}

    first, second = run(["none", "linear"], 1, "d1"), run(["none", "full adv 0"], 2, "d2")
    merged = frontier.merge(first, second, only_new=True)
    assert [(v["name"], v["value"]) for v in merged["variants"]] == [("none", 1), ("linear", 1), ("full adv 0", 2)]
    assert sorted((r["representation"], r["value"]) for r in merged["audit_table"]) == [
        ("full adv 0", 2), ("linear", 1), ("none", 1)]
    assert merged["appended_runs"][-1]["variants"] == ["full adv 0"]
    replaced = frontier.merge(first, second)  # --append replaces what it measured again
    assert [(v["name"], v["value"]) for v in replaced["variants"]][0] == ("none", 2)
    with pytest.raises(SystemExit):
        frontier.merge(first, {**second, "data": {"source": "synthetic"}}, only_new=True)


def _variant(name, *, audit, rich, share, loss):
    worst = lambda values: {a: {"worst": x} for a, x in zip(("gender", "ethnicity", "age"), values)}  # noqa: E731
    return {"name": name, "labels_at_transform": False, "audit": worst(audit), "train_split_attacker": worst(rich),
            "utility": {"min_share_of_none": share}, "reconstruction": {"psnr_loss_db": loss}}


def test_issue12_table_judges_both_attackers_utility_and_psnr(frontier):
    result = {"data": {"source": "utkface"}, "variants": [
        _variant("none", audit=(0.8, 0.5, 12.0), rich=(0.8, 0.5, 11.0), share=1.0, loss=0.0),
        _variant("good", audit=(0.55, 0.24, 15.1), rich=(0.57, 0.26, 14.6), share=0.95, loss=0.5),
        _variant("rich leak", audit=(0.55, 0.24, 15.1), rich=(0.59, 0.26, 14.6), share=0.95, loss=0.5),
        _variant("useless", audit=(0.55, 0.24, 15.1), rich=(0.57, 0.26, 14.6), share=0.5, loss=0.5),
    ]}
    header, rows = _table(frontier.issue12_lines(result))
    assert "none" not in rows and header[1] == "data-rich gender ≤ 0.58" and header[-1] == "all"
    assert rows["good"][-1] == "yes" and all(cell.startswith("yes") for cell in rows["good"])
    assert rows["rich leak"][0] == "**no** (0.590)" and rows["rich leak"][-1] == "**no**"
    assert rows["useless"][-3] == "**no** (0.50)" and rows["useless"][-1] == "**no**"
    assert frontier.issue12_lines({"data": {"source": "synthetic"}, "variants": []}) == []


def test_earlier_runs_are_linked_with_their_model(frontier, tmp_path):
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir(), figures.mkdir()
    current = results / "leakage_frontier.json"
    current.write_text("{}")
    (results / "leakage_frontier_old.json").write_text(json.dumps({
        "data": {"source": "utkface", "model": "artifacts/utk48", "model_params": {"epochs": 12}},
        "date_utc": "2026-11-26 05:38 UTC", "variants": [{}, {}]}))
    (figures / "frontier_old.png").write_bytes(b"")
    lines = frontier.earlier_run_lines({}, current, figures / "frontier.png", tmp_path / "FRONTIER.md")
    assert len(lines) == 1
    assert "[`results/leakage_frontier_old.json`](results/leakage_frontier_old.json)" in lines[0]
    assert "figures/frontier_old.png" in lines[0] and "artifacts/utk48" in lines[0] and "epochs 12" in lines[0]
    assert "not comparable" in lines[0]


def test_an_earlier_run_with_the_pages_settings_is_called_a_rerun_or_a_replicate(frontier, tmp_path):
    data = {"source": "utkface", "model": "a", "split": {"seed": 0}, "n_train": 90, "n_test": 10,
            "model_params": {"epochs": 4}}
    page = {"data": data, "audit_config": {"folds": 5}}
    (tmp_path / "leakage_frontier.json").write_text(json.dumps(page))
    runs = {"seed2": ({**data, "model": "b"}, {"folds": 5}),
            "epochs": ({**data, "model": "c", "model_params": {"epochs": 20}}, {"folds": 5}),
            "split": ({**data, "model": "d", "split": {"seed": 1}}, {"folds": 5}),
            "audit": ({**data, "model": "e"}, {"folds": 3}),
            "same": (data, {"folds": 5}),
            "same-model-other-split": ({**data, "split": {"seed": 1}}, {"folds": 5})}
    for tag, (other, audit) in runs.items():
        (tmp_path / f"leakage_frontier_{tag}.json").write_text(json.dumps(
            {"data": other, "audit_config": audit, "date_utc": "2026-12-01", "variants": []}))
    lines = frontier.earlier_run_lines(page, tmp_path / "leakage_frontier.json", tmp_path / "f.png", tmp_path / "F.md")
    said = {tag: line for tag in runs for line in lines if f"leakage_frontier_{tag}.json" in line}
    assert "training the encoder again" in said["seed2"]
    assert "Another split of the same data" in said["split"]
    assert "own randomness" in said["same"] and said["same"].startswith("- Another run of this page's model:")
    assert not any("this page's model" in said[tag] for tag in runs if tag != "same")
    for tag in ("epochs", "audit", "same-model-other-split"):  # other settings, another audit, a model scored off its split
        assert "not comparable" in said[tag], tag


def test_a_rerun_is_told_by_the_models_fingerprint_and_a_smaller_ladder_makes_a_lower_bound(frontier, tmp_path):
    data = {"source": "utkface", "model": "a", "model_fingerprint": "f1", "split": {"seed": 0}, "n_train": 90,
            "n_test": 10, "model_params": {"epochs": 4}}
    page = {"data": data, "audit_config": {"folds": 5, "probes": ["prior", "linear", "quadratic"]},
            "protocol": {"probes": ["linear", "quadratic"]}}
    (tmp_path / "leakage_frontier.json").write_text(json.dumps(page))
    runs = {"retrained-in-place": ({**data, "model_fingerprint": "f2"}, ["linear", "quadratic"]),
            "moved": ({**data, "model": "elsewhere"}, ["linear", "quadratic"]),
            "no-fingerprint": ({k: v for k, v in data.items() if k != "model_fingerprint"}, ["linear"])}
    for tag, (other, probes) in runs.items():
        (tmp_path / f"leakage_frontier_{tag}.json").write_text(json.dumps(
            {"data": other, "audit_config": {"folds": 5, "probes": ["prior", *probes]}, "protocol": {"probes": probes},
             "date_utc": "2026-12-01", "variants": []}))
    lines = frontier.earlier_run_lines(page, tmp_path / "leakage_frontier.json", tmp_path / "f.png", tmp_path / "F.md")
    said = {tag: line for tag in runs for line in lines if f"leakage_frontier_{tag}.json" in line}
    assert "training the encoder again" in said["retrained-in-place"]
    assert said["moved"].startswith("- Another run of this page's model:")
    assert said["no-fingerprint"].startswith("- Another run of this page's model:")
    assert "without the quadratic probe(s)" in said["no-fingerprint"] and "lower bounds" in said["no-fingerprint"]
    assert not any("lower bounds" in said[tag] for tag in ("retrained-in-place", "moved"))


def test_transport_variants_parse_with_bafo_runs_calibration_share(frontier):
    default = frontier.parse_variant("transport", 30)
    assert default["name"] == "transport" and default["calibration_fraction"] == frontier.CALIBRATION_FRACTION
    assert default["labels_at_transform"] and frontier.is_preset(default)
    assert frontier.parse_variant("transport:cal=0.5", 30)["name"] == "transport, cal 0.5"
    for spec in ("transport:cal=1", "transport:cal=0", "transport:dec=6"):
        with pytest.raises(ValueError, match="transport"):
            frontier.parse_variant(spec, 30)


def test_transport_calibration_rows_are_the_ones_bafo_run_holds_back(frontier):
    from bafo_pipeline.data import hash_roles, make_synthetic_faces

    faces = make_synthetic_faces(400, image_size=32, random_state=3)
    split = {"test_fraction": 0.15, "seed": 4}
    train, _ = faces.split(**split)
    fitted_on, shared = frontier.calibration_split(frontier.parse_variant("transport", 30), train, split)
    roles = hash_roles(faces.content_hash, 0.15, 4, frontier.CALIBRATION_FRACTION)
    held_back = set(np.asarray(faces.content_hash)[roles == "calibration"])
    assert set(fitted_on.content_hash) == held_back
    assert not set(fitted_on.content_hash) & set(shared.content_hash)
    assert len(fitted_on) + len(shared) == len(train)
    everything, same = frontier.calibration_split(frontier.parse_variant("linear", 30), train, split)
    assert len(everything) == len(same) == len(train)


def test_transport_variant_is_fitted_on_calibration_rows_attacked_from_shared_ones_and_decodes_as_none(frontier):
    from bafo_pipeline import BAFOTransformer
    from bafo_pipeline.data import make_synthetic_faces

    faces = make_synthetic_faces(480, image_size=32, random_state=1)
    split = {"test_fraction": 0.2, "seed": 0}
    train, test = faces.split(**split)
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=32, concealment="none", random_state=0)
    model.fit(train.images, sensitive_features=train.sensitive_features)
    attacker = {"device": "cpu", "threads": 1}
    none = frontier.measure_variant(frontier.parse_variant("none", 1), model, None, {}, train, test, 0, split)
    transport = frontier.measure_variant(frontier.parse_variant("transport", 1), model, None, {}, train, test, 0,
                                         split, attacker)
    fitted_on, shared = frontier.calibration_split(frontier.parse_variant("transport", 1), train, split)
    assert model.concealment_steps_[0].cell_counts_.sum() == len(fitted_on)
    assert transport["train_split_attacker_rows"] == len(shared) < len(train)
    assert set(transport["train_split_attacker"]) == set(frontier.ATTRIBUTES)
    np.testing.assert_allclose(transport["errors"]["psnr"], none["errors"]["psnr"], atol=1e-3)  # exact inverse
    assert not np.allclose(transport["Z"], none["Z"], atol=1e-3)  # and it did move the rows
    means = {part: model.transform(data.images, conceal=False) for part, data in (("train", train), ("test", test))}
    linear = frontier.measure_variant(frontier.parse_variant("linear", 1), model, model, means, train, test, 0, split)
    assert "errors_restored" in linear and "errors_restored" not in transport  # only LEACE's erasure is restored


def test_a_recommendation_names_the_labels_and_the_smaller_attacker_it_holds_under(frontier):
    assert frontier._caveats({"labels_at_transform": False, "train_split_attacker_rows": 100}, 100) == ""
    text = frontier._caveats({"labels_at_transform": True, "train_split_attacker_rows": 30}, 100)
    assert "labels" in text and "30 rows it shares, not all 100" in text


def test_the_cheaper_peer_is_worded_by_the_sign_and_size_of_its_saving(frontier):
    def loss(db):
        return {"reconstruction": {"psnr_loss_db": db}}

    assert frontier._loss_relative(loss(1.0), loss(1.001)) == "at the same reconstruction loss"
    assert frontier._loss_relative(loss(1.0), loss(1.5)) == "and loses 0.50 dB less in reconstruction"
    assert frontier._loss_relative(loss(2.0), loss(1.5)) == "and loses 0.50 dB more in reconstruction"


def test_pages_measured_before_a_probe_joined_the_ladder_say_their_leakage_is_a_lower_bound(frontier):
    three = " ".join(frontier.missing_probe_notes({"probes": ["linear", "mlp", "gbdt"]}))
    assert "quadratic probe" in three and "lower bound" in three and "§15" in three and "shrinkage is 40" in three
    four = " ".join(frontier.missing_probe_notes({"probes": ["linear", "mlp", "gbdt", "quadratic"]}))
    assert "QDA" not in four and "nearest-neighbour" in four and "§17" in four and "0.597" in four
    assert frontier.missing_probe_notes({"probes": ["linear", "mlp", "gbdt", "quadratic", "knn"]}) == []


def test_the_frontier_takes_its_worst_case_over_the_audits_whole_ladder(frontier):
    """A rung the frontier forgot (the quadratic or neighbour probe) would leave the worst case at the MLP's."""
    import types

    scores = {"prior": 0.50, "linear": 0.52, "mlp": 0.55, "gbdt": 0.54, "quadratic": 0.58, "knn": 0.61}
    table = pd.DataFrame([
        {"representation": "v", "attribute": "gender", "kind": "categorical", "metric": "balanced_accuracy",
         "probe": probe, "mean": score, "ci_low": score - 0.02, "ci_high": score + 0.02}
        for probe, score in scores.items()])
    worst = frontier.natural_units(types.SimpleNamespace(table=table), "v")["gender"]
    assert worst["worst_probe"] == "knn" and worst["worst"] == pytest.approx(0.61)
    assert set(worst["by_probe"]) == {"linear", "mlp", "gbdt", "quadratic", "knn"}


def test_pages_show_the_probes_their_own_run_attacked_with(frontier, tmp_path):
    stored = frontier.ROOT / "docs" / "results" / "leakage_frontier_b32_e4_2026-11-30.json"  # three probes
    result = json.loads(stored.read_text(encoding="utf-8"))
    for variant in result["variants"]:
        variant["goals_met"] = frontier.goals_met(variant)
    result["recommended"] = frontier.recommend(result["variants"])
    paths = (tmp_path / "r.json", tmp_path / "f.png", tmp_path / "F.md")
    old_page = frontier.render_markdown(result, *paths)
    assert "gender lin / MLP / GBDT |" in old_page and "/ quad" not in old_page

    result["protocol"]["probes"] = [*result["protocol"]["probes"], "quadratic"]
    result["audit_config"]["probes"] = [*result["audit_config"]["probes"], "quadratic"]
    for variant in result["variants"]:
        for table in (variant["audit"], variant.get("train_split_attacker") or {}):
            for scores in table.values():
                scores["by_probe"]["quadratic"] = 0.123
    new_page = frontier.render_markdown(result, *paths)
    assert "gender lin / MLP / GBDT / quad |" in new_page and "gender bacc lin / MLP / GBDT / quad |" in new_page
    assert "(linear, MLP, boosted trees, quadratic)" in new_page and "/ 0.123 |" in new_page
    assert "predate the audit's quadratic probe" in old_page and "predate the audit's quadratic" not in new_page
