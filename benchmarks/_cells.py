"""The attribute cells of ``bafo run``'s transport (gender x ethnicity x age bin), shared by the research variants."""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES = ("gender", "ethnicity")  # the transport's classes; age enters its cells by quartile bins


def cell_codes(attributes: pd.DataFrame, age_edges: np.ndarray, categories: list) -> np.ndarray:
    """Each row's (gender, ethnicity, age bin) as numbers; the classes are compared as strings.

    A class outside ``categories`` gets code -1.
    """
    age_bin = np.searchsorted(age_edges, attributes["age"].to_numpy(float), side="right")
    classes = [pd.Categorical(attributes[name].astype(str), categories=known).codes
               for name, known in zip(CLASSES, categories)]
    return np.column_stack(classes + [age_bin]).astype(np.int64)


def class_categories(attributes: pd.DataFrame) -> list:
    """The classes of each of :data:`CLASSES` that the rows have."""
    return [pd.Categorical(attributes[name].astype(str)).categories for name in CLASSES]
