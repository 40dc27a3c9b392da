"""scikit-learn's estimator checks on the tabular (MLP) form of BAFOTransformer."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from bafo_pipeline.transformers import BAFOTransformer




# The checks call fit(X, y) without sensitive features, which makes a plain VAE; the estimator
# warns users about that on purpose, and the warning is only noise here.
@pytest.mark.filterwarnings("ignore:BAFOTransformer fitted without sensitive_features:UserWarning")
@parametrize_with_checks([BAFOTransformer(latent_dim=2, epochs=2, widths=(8,), random_state=0)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
