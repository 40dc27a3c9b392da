"""benchmarks/calibration_rows.py: its estimator variants do what they claim, and its summary averages runs."""

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("calibration_rows") as module:
        yield module


def attributes(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.uniform(1, 80, n), "gender": rng.integers(0, 2, n),
                         "ethnicity": rng.integers(0, 3, n)})


def test_transport_cells_are_gender_by_ethnicity_by_age_quartile(bench):
    cells = bench.transport_cells(attributes(2000))
    assert len(np.unique(cells)) == 2 * 3 * 4


def test_cell_covariance_transport_rebuilt_from_public_parts_moves_rows_as_the_library_does(bench):
    """Its default covariance is the library's, so it must match ``ConditionalTransport`` on new rows too,
    including a row whose age bin had no fitted rows of its classes (moved by the nearest bin's map)."""
    rng = np.random.default_rng(3)
    labels = attributes(1500, seed=3)
    Z = rng.normal(size=(1500, 5)) * (1 + labels[["gender"]].to_numpy()) + 0.05 * labels[["age"]].to_numpy()
    fit = ~((labels["gender"] == 1) & (labels["ethnicity"] == 2) & (labels["age"] > 50)).to_numpy()  # no top-quartile cell
    new_labels, new_Z = attributes(400, seed=5), rng.normal(size=(400, 5))
    assert ((new_labels["gender"] == 1) & (new_labels["ethnicity"] == 2) & (new_labels["age"] > 70)).any()

    rebuilt = bench.CellCovarianceTransport(shrinkage=7.0).fit(Z[fit], sensitive_features=labels[fit])
    library = bench.ConditionalTransport(shrinkage=7.0).fit(Z[fit], sensitive_features=labels[fit])
    np.testing.assert_allclose(rebuilt.transform(new_Z, sensitive_features=new_labels),
                               library.transform(new_Z, sensitive_features=new_labels), atol=1e-8)
    assert len(rebuilt.cell_codes_) == 2 * 3 * 4 - 1


def test_wasserstein_barycenter_of_commuting_covariances_is_the_squared_mean_root(bench):
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    spectra = rng.uniform(0.2, 5.0, size=(3, 4))
    covariances = np.stack([(rotation * spectrum) @ rotation.T for spectrum in spectra])
    weights = np.array([0.5, 0.3, 0.2])
    expected = (rotation * (weights @ np.sqrt(spectra)) ** 2) @ rotation.T
    np.testing.assert_allclose(bench.wasserstein_barycenter(covariances, weights), expected, rtol=1e-8, atol=1e-10)
    # not the weighted mean, which is larger wherever the spectra differ
    assert not np.allclose(expected, np.einsum("k,kij->ij", weights, covariances), rtol=1e-3)


def test_barycenter_target_gives_every_cell_the_same_covariance_and_moves_rows_less(bench):
    """Every cell's covariance is mapped onto the target, and onto the barycenter the rows move less in total."""
    rng = np.random.default_rng(4)
    labels = attributes(3000, seed=4)
    scale = 1 + 1.5 * labels[["gender"]].to_numpy()
    Z = rng.normal(size=(3000, 4)) * scale + 2.0 * labels[["ethnicity"]].to_numpy()
    moved = {}
    for target in ("pooled", "barycenter"):
        step = bench.CellCovarianceTransport(shrinkage=0.0, target=target).fit(Z, sensitive_features=labels)
        moved[target] = step.transform(Z, sensitive_features=labels)
        cells = bench.transport_cells(labels)
        for cell in np.unique(cells)[:5]:
            np.testing.assert_allclose(np.cov(moved[target][cells == cell].T), step.target_, rtol=1e-6, atol=1e-8)
    # in-sample, each cell's move is its mean shift (the same for both) plus its covariance map's cost, which the
    # barycenter minimises over common targets
    displacement = {t: np.mean(np.sum((m - Z) ** 2, axis=1)) for t, m in moved.items()}
    assert displacement["barycenter"] < displacement["pooled"] - 0.05, displacement
    with pytest.raises(ValueError, match="target"):
        bench.CellCovarianceTransport(target="mean").fit(Z, sensitive_features=labels)


def test_subspace_transport_finds_a_planted_direction_and_none_in_noise(bench):
    rng = np.random.default_rng(1)
    labels = attributes(2400, seed=1)
    noise = rng.normal(size=(2400, 12))
    assert bench.SubspaceTransport("parallel").fit(noise, sensitive_features=labels).dims_ <= 2

    planted = noise.copy()
    planted[:, 3] += 2.0 * labels["gender"].to_numpy()
    step = bench.SubspaceTransport("parallel").fit(planted, sensitive_features=labels)
    assert step.dims_ >= 1
    moved = step.transform(planted, sensitive_features=labels)
    male = labels["gender"].to_numpy() == 1
    gap = np.abs(moved[male].mean(axis=0) - moved[~male].mean(axis=0)).max()
    assert gap < 0.05  # the planted gender shift (2.0) is gone

    one_dim = bench.SubspaceTransport(1).fit(planted, sensitive_features=labels)
    change = one_dim.transform(planted, sensitive_features=labels) - planted
    # what moved lies in one direction: the change matrix has rank one
    singular = np.linalg.svd(change, compute_uv=False)
    assert singular[1] < 1e-8 * singular[0]


def test_principal_transport_drops_the_low_variance_directions_and_moves_the_rest(bench):
    rng = np.random.default_rng(2)
    labels = attributes(3000, seed=2)
    Z = rng.normal(size=(3000, 8)) * np.array([3, 3, 3, 3, 0.05, 0.05, 0.05, 0.05])
    Z[:, 0] += 2.0 * labels["gender"].to_numpy()
    Z[:, 5] += 0.1 * labels["gender"].to_numpy()  # a label difference in a low-variance direction
    step = bench.PrincipalTransport(0.99).fit(Z, sensitive_features=labels)
    assert step.dims_ == 4
    moved = step.transform(Z, sensitive_features=labels)
    assert (moved[:, 4:].std(axis=0) < 0.3 * Z[:, 4:].std(axis=0)).all()  # the dropped directions stay put
    male = labels["gender"].to_numpy() == 1
    assert np.abs(moved[male].mean(axis=0) - moved[~male].mean(axis=0)).max() < 0.05


@pytest.mark.parametrize("rest", [None, "means", "block", "per-dim"])
def test_principal_transport_treats_the_low_variance_rest_as_its_mode_says(bench, rest):
    rng = np.random.default_rng(6)
    labels = attributes(4000, seed=6)
    male = labels["gender"].to_numpy() == 1
    Z = rng.normal(size=(4000, 6)) * np.array([3, 3, 3, 0.05, 0.05, 0.05])
    Z[:, 3] = Z[:, 3] * np.where(male, 3.0, 1.0) + 0.1 * male  # the rest: a gender shift and spread
    step = bench.PrincipalTransport(0.99, rest=rest).fit(Z, sensitive_features=labels)
    moved = (step.transform(Z, sensitive_features=labels) - step.mean_) @ step.components_[:, 3:]  # the rest
    gap = np.abs(moved[male].mean(axis=0) - moved[~male].mean(axis=0)).max()
    spread = moved[male].std(axis=0).max() / max(moved[~male].std(axis=0).max(), 1e-12)
    assert step.dims_ == 3 and len(step.blocks_) == {None: 1, "means": 2, "block": 2, "per-dim": 4}[rest]
    if rest is None:
        assert np.ptp(moved, axis=0).max() < 1e-9  # set to its mean
    else:
        assert gap < 0.01  # the planted shift (0.1) is gone
        assert (spread > 2) if rest == "means" else (abs(spread - 1) < 0.2)


def test_additive_covariance_model_matches_cells_it_never_pools(bench):
    """Variance effects that multiply (gender scales column 0, ethnicity column 1) are a log-additive model:
    the model-only variant gives every cell the pooled spread, shrinking towards the pooled covariance does not."""
    rng = np.random.default_rng(2)
    labels = attributes(6000, seed=2)
    scale = np.ones((6000, 4))
    scale[:, 0] = np.where(labels["gender"] == 1, 3.0, 1.0)
    scale[:, 1] = np.where(labels["ethnicity"] == 2, 3.0, 1.0)
    latents = rng.normal(size=(6000, 4)) * scale

    def spread_ratio(step):
        moved = step.fit(latents, sensitive_features=labels).transform(latents, sensitive_features=labels)
        male, third = labels["gender"].to_numpy() == 1, labels["ethnicity"].to_numpy() == 2
        return moved[male, 0].std() / moved[~male, 0].std(), moved[third, 1].std() / moved[~third, 1].std()

    model_only = spread_ratio(bench.AdditiveCovarianceTransport(shrinkage=1e9))
    pooled_only = spread_ratio(bench.ConditionalTransport(shrinkage=1e9))
    assert all(abs(r - 1) < 0.05 for r in model_only)
    assert all(r > 2 for r in pooled_only)  # shrunk fully to the pooled covariance, a cell keeps its own spread


def test_spiked_covariance_keeps_a_planted_spike_and_drops_the_noise_bulk(bench):
    rng = np.random.default_rng(4)
    d, rows = 20, 40  # fewer rows than twice the dimensions: the sample eigenvalues spread from ~0 to ~4
    truth = np.eye(d)
    truth[0, 0] = 9.0
    sample = np.cov((rng.normal(size=(rows, d)) * np.sqrt(np.diag(truth))).T)
    estimate = bench.spiked_covariance(sample, np.eye(d), rows)
    values = np.sort(np.linalg.eigvalsh(estimate))
    assert 5 < values[-1] < 13  # the spike, debiased (its sample value is inflated by the bulk)
    np.testing.assert_allclose(values[:-1], 1.0, atol=1e-9)  # every other direction: the reference's
    sample_values = np.sort(np.linalg.eigvalsh(sample))
    assert sample_values[0] < 0.5 and sample_values[-2] > 1.8  # what it shrank away


def test_marginal_transport_matches_each_attribute_and_inverts_step_by_step(bench):
    rng = np.random.default_rng(4)
    labels = attributes(3000, seed=4)
    Z = rng.normal(size=(3000, 4))
    Z[:, 0] += 2.0 * labels["gender"].to_numpy()
    Z[:, 1] *= 1 + labels["ethnicity"].to_numpy()  # a difference in spread, not in mean
    step = bench.MarginalTransport(2).fit(Z, sensitive_features=labels)
    assert [name for name, _ in step.steps_] == list(labels.columns) * 2
    renamed = bench.MarginalTransport(1).fit(Z, sensitive_features=labels[["gender"]].rename(columns={"gender": "sex"}))
    assert [name for name, _ in renamed.steps_] == ["sex"]  # the columns given, not fixed names
    moved = step.transform(Z, sensitive_features=labels)
    male = labels["gender"].to_numpy() == 1
    assert np.abs(moved[male].mean(axis=0) - moved[~male].mean(axis=0)).max() < 0.05
    spreads = [moved[labels["ethnicity"].to_numpy() == group, 1].std() for group in range(3)]
    assert max(spreads) / min(spreads) < 1.1  # was 3: the ethnicity groups' spreads are matched too
    back = moved
    for name, single in reversed(step.steps_):
        back = single.inverse_transform(back, sensitive_features=labels[[name]])
    np.testing.assert_allclose(back, Z, atol=1e-8)


def test_cell_maps_after_the_marginal_pass_match_a_joint_spread_it_leaves(bench):
    rng = np.random.default_rng(9)
    labels = attributes(6000, seed=9)
    Z = rng.normal(size=(6000, 3))
    both = ((labels["gender"] == 1) & (labels["ethnicity"] == 2)).to_numpy()
    Z[:, 0] *= np.where(both, 3.0, 1.0)  # a spread only the two attributes together have

    def joint_ratio(moved):
        return moved[both, 0].std() / moved[~both, 0].std()

    marginal = bench.MarginalTransport(1).fit(Z, sensitive_features=labels)
    assert joint_ratio(marginal.transform(Z, sensitive_features=labels)) > 1.15  # was about 3: partly left
    step = bench.MarginalThenCells(40).fit(Z, sensitive_features=labels)
    moved = step.transform(Z, sensitive_features=labels)
    assert joint_ratio(moved) == pytest.approx(1.0, abs=0.1)
    # the cells are fitted on, and applied to, what the marginal pass moved
    after_marginal = step.marginal_.transform(Z, sensitive_features=labels)
    np.testing.assert_allclose(moved, step.cells_.transform(after_marginal, sensitive_features=labels))
    reference = bench.ConditionalTransport(shrinkage=40).fit(after_marginal, sensitive_features=labels)
    np.testing.assert_allclose(step.cells_.transports_, reference.transports_, atol=1e-10)

    # onto the barycenter: the same joint spread matched, by the cell maps fitted on the marginal pass's rows
    onto_barycenter = bench.MarginalThenCells(40, target="barycenter").fit(Z, sensitive_features=labels)
    assert isinstance(onto_barycenter.cells_, bench.CellCovarianceTransport)
    assert onto_barycenter.cells_.target == "barycenter"
    assert joint_ratio(onto_barycenter.transform(Z, sensitive_features=labels)) == pytest.approx(1.0, abs=0.1)
    reference = bench.CellCovarianceTransport(40, target="barycenter").fit(after_marginal, sensitive_features=labels)
    np.testing.assert_allclose(onto_barycenter.cells_.transports_, reference.transports_, atol=1e-10)


def test_likelihood_shrinkage_pools_cells_that_share_a_covariance_and_not_cells_that_do_not(bench):
    rng = np.random.default_rng(11)
    labels = attributes(6000, seed=11)
    cells = bench.transport_cells(labels)
    same = rng.normal(size=(6000, 4))
    assert bench.likelihood_shrinkage(same, cells) >= 320
    scales = rng.uniform(0.3, 3.0, size=(cells.max() + 1, 4))  # every cell its own spread per column
    assert bench.likelihood_shrinkage(same * scales[cells], cells) <= 10

    step = bench.LikelihoodShrinkageTransport().fit(same * scales[cells], sensitive_features=labels)
    assert step.shrinkage_ <= 10 and step.transport_.shrinkage == step.shrinkage_


def test_extra_settings_need_the_extra_faces(bench, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["calibration_rows.py", "--extra", "0", "--settings", "half,extra-10"])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2 and "uses 10 extra faces but --extra is 0" in capsys.readouterr().err


def test_make_step_names_the_variants(bench):
    assert isinstance(bench.make_step("half"), bench.ConditionalTransport)
    assert bench.make_step("half+bins2").continuous_bins == 2
    assert isinstance(bench.make_step("half+subspace-8"), bench.SubspaceTransport)
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.make_step("half+nope")


def test_worst_cases_take_the_strongest_probe_and_attacker(bench):
    from bafo_pipeline.audits import audit_leakage

    rng = np.random.default_rng(3)
    labels = attributes(600, seed=3)[["gender"]]
    leaky = rng.normal(size=(600, 3)) + labels[["gender"]].to_numpy()
    result = audit_leakage({"leaky": leaky[:300], "blind": rng.normal(size=(300, 3))}, labels[:300],
                           fit_representations={"leaky": leaky[300:]}, fit_labels=labels[300:].reset_index(drop=True),
                           probes=("prior", "linear"), n_bootstrap=20, n_permutations=0)
    worst = bench.worst_cases(result)
    table = result.metric("leakage")
    leaky_rows = table[(table["representation"] == "leaky") & (table["probe"] != "prior")]
    assert worst["leaky"]["gender"]["leakage"] == round(leaky_rows["mean"].max(), 3)
    assert worst["leaky"]["gender"]["leakage"] > 0.3 > worst["blind"]["gender"]["leakage"]
    assert worst["blind"]["gender"]["attacker"] == "cross-validated"  # blind had no training export


def test_summary_averages_each_setting_over_runs(bench):
    def run(gender, age, kept):
        case = {"gender": {"leakage": gender}, "age": {"leakage": age}}
        return {"settings": {"half": {"calibration_rows": 10, "worst_case": case,
                                      "kept_share": {"smile": kept, "tilt": 1.0},
                                      "score": {"smile": kept / 2, "tilt": 0.5}}}}

    summary = bench.summary([run(0.2, 0.1, 0.8), run(0.0, 0.3, 0.9)])["half"]
    assert summary["runs"] == 2 and summary["gender"] == 0.1 and summary["age"] == 0.2
    assert summary["worst"] == 0.25  # the mean of each run's worst attribute (0.2, 0.3), not the worst mean
    assert summary["kept_smile"] == 0.85 and summary["lowest_kept"] == 0.85
    assert summary["score_smile"] == 0.425 and summary["score_tilt"] == 0.5
    assert "worst_by_probe" not in summary  # runs without per-probe leakage (older JSONs)


def test_summary_says_which_probe_sets_the_worst_case(bench):
    def run(linear, quadratic):
        by_probe = {"gender": {"linear": linear[0], "quadratic": quadratic[0]},
                    "age": {"linear": linear[1], "quadratic": quadratic[1]}}
        return {"settings": {"half": {"calibration_rows": 10, "worst_case": {"gender": {"leakage": 0.0}},
                                      "leakage_by_probe": by_probe}}}

    summary = bench.summary([run((0.1, 0.3), (0.2, 0.0)), run((0.0, 0.1), (0.4, 0.2))])["half"]
    assert summary["worst_by_probe"] == {"linear": 0.2, "quadratic": 0.3}  # means of each run's worst attribute


def test_leakage_by_probe_keeps_each_probes_larger_attacker(bench):
    """On a planted difference in spread the quadratic probe reads what the linear one cannot, per attacker."""
    rng = np.random.default_rng(2)
    labels = attributes(1600, seed=2)
    Z = rng.normal(size=(1600, 4))
    Z[:, 1] *= np.where(labels["gender"] == 1, 3.0, 1.0)
    result = bench.audit_leakage({"z": Z[800:]}, labels.iloc[800:].reset_index(drop=True), probes=("linear", "quadratic"),
                                 fit_representations={"z": Z[:800]}, fit_labels=labels.iloc[:800], n_bootstrap=0,
                                 n_permutations=0, random_state=0)
    by_probe = bench.leakage_by_probe(result)["z"]
    leak = result.metric("leakage")
    for attribute, probes in by_probe.items():
        for probe, value in probes.items():
            rows = leak[(leak["attribute"] == attribute) & (leak["probe"] == probe)]
            assert value == round(float(rows["mean"].max()), 3)  # the larger attacker
    gender = leak[(leak["attribute"] == "gender") & (leak["probe"] == "quadratic")]
    assert gender["attacker"].nunique() == 2 and gender["mean"].nunique() == 2  # ... of two that differ
    assert {"linear", "quadratic"} <= set(by_probe["gender"]) and "prior" not in by_probe["gender"]
    assert by_probe["gender"]["quadratic"] > by_probe["gender"]["linear"] + 0.2


def test_demo_latents_come_from_the_given_encoder_options_and_are_cached_under_them(bench, tmp_path, monkeypatch):
    import _demo_latents

    options = {"epochs": 1, "latent_dim": 4, "decoder_epochs": 0}
    first = bench.demo_latents(0, 80, 10, tmp_path, options)
    assert {name: latents.shape for name, (latents, _) in first.items()} == {
        "train": (len(first["train"][1]), 4), "test": (len(first["test"][1]), 4), "extra": (10, 4)}
    assert len(first["train"][1]) + len(first["test"][1]) == 80 and "smile" in first["extra"][1]
    (path,) = tmp_path.glob("*.npz")
    assert "_epochs1" in path.name and "_latent_dim4" in path.name
    saved = dict(np.load(path))
    np.savez(path, **{**saved, "test": saved["test"] + 1.0})  # a second call reads the cache, not a new encoder
    with monkeypatch.context() as patch:  # ... and draws no faces: the attributes are cached too
        patch.setattr(_demo_latents, "make_synthetic_faces", _fails)
        patch.setattr(_demo_latents, "BAFOTransformer", _fails)
        again = bench.demo_latents(0, 80, 10, tmp_path, options)
    np.testing.assert_allclose(again["test"][0], first["test"][0] + 1.0)
    np.testing.assert_array_equal(again["train"][0], first["train"][0])
    for name, (_, labels) in first.items():
        pd.testing.assert_frame_equal(again[name][1], labels)
    path.with_suffix(".parquet").unlink()  # a cache from before the attributes were kept: faces, but no encoder
    with monkeypatch.context() as patch:
        patch.setattr(_demo_latents, "BAFOTransformer", _fails)
        redrawn = bench.demo_latents(0, 80, 10, tmp_path, options)
    np.testing.assert_allclose(redrawn["test"][0], first["test"][0] + 1.0)
    pd.testing.assert_frame_equal(redrawn["extra"][1], first["extra"][1])
    assert path.with_suffix(".parquet").exists()
    assert bench.demo_latents(0, 80, 10, None, options)["test"][0].shape == first["test"][0].shape


def _fails(*args, **kwargs):
    raise AssertionError("called although the cache holds the answer")


def test_a_demo_run_records_each_settings_scores_and_the_unconcealed_ones_its_shares_divide_by(bench):
    rng = np.random.default_rng(5)

    def part(n, seed):
        labels = attributes(n, seed=seed).assign(smile=rng.normal(size=n))
        latents = rng.normal(size=(n, 3))
        latents[:, 0] += 2.0 * labels["smile"].to_numpy()
        return latents, labels

    run = bench.demo_run({"train": part(600, 6), "test": part(300, 7)}, ["half"], split=0, seed=0, n_bootstrap=10)
    half = run["settings"]["half"]
    assert set(half["worst_case"]) == {*bench.SENSITIVE, "age_band"} and half["calibration_rows"] > 250
    assert run["unconcealed_score"]["smile"] > 0.5  # the planted smile
    assert half["kept_share"]["smile"] == pytest.approx(half["score"]["smile"] / run["unconcealed_score"]["smile"],
                                                        abs=0.01)


def test_the_held_out_marginal_pass_is_fitted_on_rows_the_cell_maps_never_saw(bench):
    rng = np.random.default_rng(12)
    labels = attributes(3000, seed=12)
    Z = rng.normal(size=(3000, 3))
    Z[:, 0] *= np.where(labels["gender"] == 1, 2.0, 1.0)
    step = bench.CellsThenHeldOutMarginal(0.3, shrinkage=1e12).fit(Z, sensitive_features=labels)  # cells: means only
    held_out = step.held_out_rows_
    assert 0.25 < held_out.mean() < 0.35
    reference = bench.ConditionalTransport(shrinkage=1e12).fit(Z[~held_out], sensitive_features=labels[~held_out])
    np.testing.assert_allclose(step.cells_.cell_means_, reference.cell_means_)
    moved = step.cells_.transform(Z[held_out], sensitive_features=labels[held_out].reset_index(drop=True))
    again = bench.MarginalTransport(1).fit(moved, sensitive_features=labels[held_out].reset_index(drop=True))
    new_labels, new_Z = attributes(2000, seed=13), rng.normal(size=(2000, 3))
    new_Z[:, 0] *= np.where(new_labels["gender"] == 1, 2.0, 1.0)
    out = step.transform(new_Z, sensitive_features=new_labels)
    expected = again.transform(step.cells_.transform(new_Z, sensitive_features=new_labels), sensitive_features=new_labels)
    np.testing.assert_allclose(out, expected)
    # the cell maps left gender's spread (means only); the held-out marginal pass removes it from new rows
    women = (new_labels["gender"] == 1).to_numpy()
    assert out[women, 0].std() / out[~women, 0].std() == pytest.approx(1.0, abs=0.1)
