"""Constructor-parameter checks (bafo_pipeline._utils.params): each rule accepts and refuses what it says,
and every estimator's fit refuses a bad parameter before doing any work, naming it."""

from numbers import Integral, Real

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline import BAFOTransformer, ConditionalTransport, LatentRefiner, LinearErasure, TrainedErasure
from bafo_pipeline._utils.params import InvalidParameterError, Interval, Options, StrOptions, check_parameters
from bafo_pipeline.audits.mlp import TorchMLPProbe


@pytest.mark.parametrize(
    ("rule", "accepted", "refused"),
    [
        (Interval(Integral, 1, None, closed="left"), [1, 7, np.int64(3)], [0, -2, 1.0, True, "3", None]),
        (Interval(Real, 0, None, closed="neither"), [1e-9, 2, 0.5], [0, 0.0, -1.0, float("nan"), True]),
        (Interval(Real, 0, 1, closed="left"), [0, 0.0, 0.999], [1, 1.0, -0.1]),
        (Interval(Integral, 0, 10, closed="both"), [0, 10], [-1, 11]),
        (Interval(Real, 0, 1, closed="right"), [1.0, 0.3], [0.0]),
        (Options(Integral, {0}), [0, np.int64(0)], [1, 0.0, False]),
        (StrOptions({"a", "b"}), ["a", "b"], ["c", 1, None]),
    ],
)
def test_each_rule_accepts_its_values_and_refuses_the_rest(rule, accepted, refused):
    assert all(rule.accepts(value) for value in accepted)
    assert not any(rule.accepts(value) for value in refused)


class _Toy:
    _parameter_rules = {
        "size": [Interval(Integral, 1, None, closed="left"), None],
        "mode": [StrOptions({"fast", "exact"})],
        "flag": ["boolean"],
        "seed": ["random_state"],
        "verbose": ["verbose"],
        "shape": [tuple, list],
    }

    def __init__(self, **params):
        self.params = {"size": None, "mode": "fast", "flag": False, "seed": None, "verbose": 0, "shape": (1,)}
        self.params.update(params)

    def get_params(self, deep=False):
        return dict(self.params)


@pytest.mark.parametrize(
    "good",
    [{}, {"size": 3}, {"flag": np.bool_(True)}, {"seed": np.random.RandomState(0)}, {"seed": 2**32 - 1},
     {"verbose": True}, {"verbose": 2}, {"shape": [2, 3]}],
)
def test_check_parameters_passes_values_within_some_rule(good):
    check_parameters(_Toy(**good))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"size": 0}, "The 'size' parameter of _Toy must be an int in the range [1, inf) or None. Got 0 instead."),
        ({"mode": "slow"}, "'mode' parameter of _Toy must be a str among ['exact', 'fast']. Got 'slow'"),
        ({"flag": 1}, "'flag' parameter of _Toy must be a bool. Got 1"),
        ({"seed": -1}, "'seed' parameter of _Toy must be None, an int in [0, 2**32) or a numpy RandomState"),
        ({"seed": 2**32}, "'seed' parameter"),
        ({"verbose": "yes"}, "'verbose' parameter of _Toy must be an int or a bool"),
        ({"shape": "1"}, "'shape' parameter of _Toy must be an instance of 'tuple' or an instance of 'list'"),
    ],
)
def test_check_parameters_names_the_parameter_the_rule_and_the_value(bad, message):
    with pytest.raises(InvalidParameterError) as error:
        check_parameters(_Toy(**bad))
    assert message in str(error.value)
    assert isinstance(error.value, ValueError) and isinstance(error.value, TypeError)


def test_interval_refuses_an_unknown_closed_side():
    with pytest.raises(ValueError, match="closed must be"):
        Interval(Real, 0, 1, closed="open")


_Z = np.random.default_rng(0).normal(size=(40, 3))
_S = pd.DataFrame({"gender": ["f", "m"] * 20, "age": np.linspace(1, 80, 40)})


@pytest.mark.parametrize(
    ("estimator", "fit", "parameter"),
    [
        (BAFOTransformer(latent_dim=0), lambda e: e.fit(np.zeros((4, 3))), "latent_dim"),
        (BAFOTransformer(concealment="bogus"), lambda e: e.fit(np.zeros((4, 3))), "concealment"),
        (LinearErasure(covariance_dims=-1), lambda e: e.fit(_Z, sensitive_features=_S), "covariance_dims"),
        (TrainedErasure(matching="nope"), lambda e: e.fit(_Z, sensitive_features=_S), "matching"),
        (ConditionalTransport(smooth_mean_knots=1), lambda e: e.fit(_Z, sensitive_features=_S), "smooth_mean_knots"),
        (ConditionalTransport(mean_shrinkage=1.5), lambda e: e.fit(_Z, sensitive_features=_S), "mean_shrinkage"),
        (ConditionalTransport(ridge_alpha="on"), lambda e: e.fit(_Z, sensitive_features=_S), "ridge_alpha"),
        (LatentRefiner(kl_weight=-1.0), lambda e: e.fit(_Z, sensitive_features=_S), "kl_weight"),
        (TorchMLPProbe(lr=0.0), lambda e: e.fit(_Z, np.arange(40) % 2), "lr"),
    ],
)
def test_every_estimator_refuses_a_bad_parameter_at_fit_naming_it(estimator, fit, parameter):
    with pytest.raises(InvalidParameterError, match=f"'{parameter}' parameter of {type(estimator).__name__}"):
        fit(estimator)
