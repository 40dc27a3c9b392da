"""benchmarks/trained_concealment.py's seed merge: per-seed ΔPSNR/shares against that seed's 'none', min-max spread."""

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("trained_concealment") as module:
        yield module


def result(gender: float, psnr: float, yaw: float) -> dict:
    """A minimal variant result: data-rich leakage, per-image PSNR, one utility target."""
    attack = {a: {"worst": v, "worst_probe": "mlp", "ci95": [v - 0.01, v + 0.01]}
              for a, v in {"gender": gender, "ethnicity": 0.3, "age": 14.0, "age_band": 0.3}.items()}
    return {"data_rich": attack, "psnr_per_image": [psnr, psnr + 1.0], "psnr_db": psnr + 0.5,
            "utility": {"yaw": {"best": yaw}}}


def result_file(tmp_path: Path, seed: int, variants: dict) -> str:
    path = tmp_path / f"seed{seed}.json"
    setting = {"data": "utkface", "epochs": 4, "seed": seed}
    path.write_text(json.dumps({"benchmark": "trained_concealment", "setting": setting, "variants": variants}))
    return str(path)


def test_spread_is_min_max_over_seeds_against_each_seeds_own_none(bench, tmp_path):
    sources = [
        result_file(tmp_path, 0, {"none": result(0.80, 22.0, 0.90), "full": result(0.62, 17.0, 0.81),
                                  "only_here": result(0.5, 10.0, 0.1)}),
        result_file(tmp_path, 1, {"none": result(0.82, 21.0, 0.80), "full": result(0.60, 17.0, 0.80)}),
        result_file(tmp_path, 2, {"none": result(0.81, 22.0, 0.90), "full": result(0.65, 16.0, 0.45)}),
    ]
    out = bench.merge_seeds(sources, tmp_path / "seeds.json")

    assert json.loads((tmp_path / "seeds.json").read_text())["spread"] == out["spread"]
    assert set(out["spread"]) == {"none", "full"}  # a variant missing at some seed is dropped
    assert "seed" not in out["setting"]
    gender = out["spread"]["full"]["data_rich.gender"]
    assert gender["by_seed"] == {"0": 0.62, "1": 0.60, "2": 0.65}
    assert (gender["min"], gender["max"]) == (0.60, 0.65)
    assert gender["range"] == pytest.approx(0.05)
    # ΔPSNR and the utility share are against the same seed's 'none': -5, -4, -6 dB; 0.9, 1.0, 0.5
    assert out["spread"]["full"]["delta_psnr_db"]["by_seed"] == pytest.approx({"0": -5.0, "1": -4.0, "2": -6.0})
    assert out["spread"]["full"]["utility_share.yaw"]["by_seed"] == pytest.approx({"0": 0.9, "1": 1.0, "2": 0.5})
    assert out["spread"]["none"]["delta_psnr_db"]["range"] == 0.0

    table = bench.seeds_table(out)
    assert "| full | 1 | 0.600 (0.590–0.610)" in table
    assert "| 17.50 | -4.00 |" in table  # seed 1: PSNR 17.5 dB, 4 dB below its own none
    assert "| **full: min–max (range)** | all | 0.600–0.650 (0.050)" in table


def test_merge_refuses_other_settings_and_repeated_seeds(bench, tmp_path):
    first = result_file(tmp_path, 0, {"none": result(0.8, 22.0, 0.9)})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"setting": {"data": "utkface", "epochs": 8, "seed": 1},
                                 "variants": {"none": result(0.8, 22.0, 0.9)}}))
    with pytest.raises(SystemExit, match="different settings"):
        bench.merge_seeds([first, str(other)], tmp_path / "out.json")
    with pytest.raises(SystemExit, match="same seed twice"):
        bench.merge_seeds([first, first], tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
