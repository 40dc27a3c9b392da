"""Content hashing, de-duplication and the hash-based train/test split."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.data.dataset import FaceDataset
from bafo_pipeline.data.splits import content_hash, dedupe_by_hash, hash_files, hash_split


def _random_hashes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([content_hash(rng.bytes(16)) for _ in range(n)], dtype=object)


def test_split_is_deterministic_and_respects_the_fraction():
    hashes = _random_hashes(2000)
    is_test = hash_split(hashes, test_fraction=0.15, seed=0)
    assert is_test.dtype == bool and is_test.shape == (2000,)
    np.testing.assert_array_equal(is_test, hash_split(list(hashes), test_fraction=0.15, seed=0))
    assert abs(is_test.mean() - 0.15) < 0.03  # binomial sd is 0.008
    assert abs(hash_split(hashes, test_fraction=0.5).mean() - 0.5) < 0.05


def test_adding_or_reordering_files_moves_nothing():
    hashes = _random_hashes(500)
    base = hash_split(hashes, seed=3)
    more = np.concatenate([hashes, _random_hashes(300, seed=1)])
    order = np.random.default_rng(2).permutation(len(more))
    shuffled = hash_split(more[order], seed=3)
    back = np.empty_like(shuffled)
    back[order] = shuffled
    np.testing.assert_array_equal(back[:500], base)


def test_identical_hashes_share_a_side_and_seed_changes_the_split():
    hashes = _random_hashes(200)
    doubled = np.concatenate([hashes, hashes])
    is_test = hash_split(doubled, seed=7)
    np.testing.assert_array_equal(is_test[:200], is_test[200:])
    assert (hash_split(hashes, seed=0) != hash_split(hashes, seed=1)).any()


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_fraction_outside_open_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        hash_split(["a", "b"], test_fraction=fraction)


def test_dataset_split_keeps_duplicates_together():
    base = _random_hashes(150)
    hashes = np.concatenate([base, base[:50]])
    n = len(hashes)
    data = FaceDataset(
        images=np.zeros((n, 4, 4, 3), dtype=np.uint8),
        attributes=pd.DataFrame({"age": np.arange(n, dtype=float)}),
        sensitive=("age",),
        content_hash=hashes,
    )
    train, test = data.split(test_fraction=0.3, seed=0)
    assert len(train) + len(test) == n
    assert not set(train.content_hash) & set(test.content_hash)


def test_hash_files(tmp_path):
    good = tmp_path / "a.bin"
    good.write_bytes(b"some bytes")
    hashes, reasons = hash_files([good, tmp_path / "missing.bin", tmp_path], n_jobs=2)
    assert hashes[0] == hashlib.sha1(b"some bytes").hexdigest() and reasons[0] is None
    assert hashes[1] is None and reasons[1] == "file not found"
    assert hashes[2] is None and "directory" in reasons[2]


@pytest.fixture
def table():
    # Group h1 agrees (3 copies), h2 conflicts on gender (2 copies), h3 and h4 are single.
    return pd.DataFrame(
        {
            "path": [f"f{i}" for i in range(7)],
            "age": [30.0, 30.0, 41.0, 41.0, 30.0, 5.0, 30.0],
            "gender": ["male", "male", "female", "male", "male", "female", "male"],
            "content_hash": ["h1", "h1", "h2", "h2", "h3", "h4", "h1"],
        }
    )


def test_drop_conflicts(table):
    kept, counts = dedupe_by_hash(table, ["age", "gender"])
    assert kept["path"].tolist() == ["f0", "f4", "f5"]
    assert counts == {"duplicates_dropped": 2, "conflicting_groups_dropped": 1, "conflicting_files_dropped": 2}


def test_conflicts_are_judged_on_the_given_columns_only(table):
    kept, counts = dedupe_by_hash(table, ["age"])
    assert kept["path"].tolist() == ["f0", "f2", "f4", "f5"]
    assert counts["conflicting_groups_dropped"] == 0 and counts["duplicates_dropped"] == 3


def test_keep_first_and_none(table):
    kept, counts = dedupe_by_hash(table, ["age", "gender"], "keep-first")
    assert kept["path"].tolist() == ["f0", "f2", "f4", "f5"]
    assert counts["duplicates_dropped"] == 3 and counts["conflicting_files_dropped"] == 0
    kept, counts = dedupe_by_hash(table, ["age", "gender"], "none")
    assert len(kept) == len(table) and sum(counts.values()) == 0


def test_unknown_dedupe_mode(table):
    with pytest.raises(ValueError, match="dedupe must be one of"):
        dedupe_by_hash(table, ["age"], "drop")


def test_roles_keep_the_test_split_and_take_calibration_rows_from_the_rest():
    from bafo_pipeline.data import hash_roles, rows_of_split

    hashes = [f"{i:08x}" for i in range(20_000)]
    roles = hash_roles(hashes, test_fraction=0.15, seed=3, calibration_fraction=0.7)
    np.testing.assert_array_equal(roles == "test", hash_split(hashes, test_fraction=0.15, seed=3))
    assert abs((roles == "calibration").sum() / (roles != "test").sum() - 0.7) < 0.02
    assert set(hash_roles(hashes, test_fraction=0.15, seed=3)) == {"test", "train"}
    np.testing.assert_array_equal(rows_of_split(roles, "all"), roles != "calibration")
    np.testing.assert_array_equal(rows_of_split(roles, "calibration"), roles == "calibration")
    with pytest.raises(ValueError, match="split must be one of"):
        rows_of_split(roles, "shared")
