"""Planted attribute cells with equal means and covariances but different shapes (the shape tests' data)."""

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier


def planted(n, seed):
    """Two genders with the same mean and covariance in columns 0-1 but different shapes (a square's corners
    against its edges' midpoints, with a little noise), and an independent signal in column 2."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"gender": rng.integers(0, 2, n), "ethnicity": rng.integers(0, 2, n),
                           "age": rng.uniform(1, 80, n)})
    male = labels["gender"].to_numpy() == 1
    corners = rng.choice([-1.0, 1.0], size=(n, 2))
    midpoints = np.where(rng.integers(0, 2, (n, 1)) == 1, [[1.0, 0.0]], [[0.0, 1.0]]) * rng.choice([-1.0, 1.0], (n, 1))
    shape = np.where(male[:, None], corners, midpoints * np.sqrt(2))
    independent = 0.5 * rng.normal(size=n)
    Z = np.column_stack([shape + 0.15 * rng.normal(size=(n, 2)), independent])
    return Z, labels, independent


def knn_reads_gender(fit, fit_labels, score, score_labels) -> float:
    probe = KNeighborsClassifier(15).fit(fit, fit_labels["gender"])
    return balanced_accuracy_score(score_labels["gender"], probe.predict(score))


def planted_radii(n, seed):
    """Two genders with the same mean and covariance (the identity) in columns 0-1: a Gaussian against a
    scale mixture (half the rows tight around the centre, half spread wide); an independent signal in column 2."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({"gender": rng.integers(0, 2, n), "ethnicity": rng.integers(0, 2, n),
                           "age": rng.uniform(1, 80, n)})
    male = labels["gender"].to_numpy() == 1
    scale = np.where(rng.random(n) < 0.5, 0.25, np.sqrt(2 - 0.25**2))  # mean square 1: the Gaussian's covariance
    shape = rng.normal(size=(n, 2)) * np.where(male, scale, 1.0)[:, None]
    independent = 0.5 * rng.normal(size=n)
    return np.column_stack([shape, independent]), labels, independent
