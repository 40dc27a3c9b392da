"""The fitted state of an estimator, declared once: every attribute ``name_`` that ``fit`` sets.

Pickling (``__getstate__``) and model directories (``save_model``) both read the
state through :func:`get_state` and restore it through :func:`set_state`, so a
new fitted attribute needs no persistence code as long as it is of a kind this
module knows: numbers, strings, ``None``, lists, tuples and string-keyed dicts
of them, NumPy arrays and dtypes, :class:`AttributeSchema`, :class:`InputFormat`,
:class:`BAFONetwork`, or a nested estimator (a concealment step) made of the
same. Anything else fails loudly at save time, naming the attribute.

For a model directory, :func:`encode` splits a state into a JSON tree and named
tensors (safetensors), and :func:`decode` puts it back together; nested
estimators are rebuilt only from the classes the caller allows, so loading a
model never imports or runs code named in a file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._nn.network import BAFONetwork, NetworkConfig
from ..attributes import AttributeSchema
from ._inputs import InputFormat

__all__ = [
    "NetworkState",
    "loadable_classes",
    "register_loadable",
    "TensorStore",
    "build_estimator",
    "decode",
    "encode",
    "fitted_attribute_names",
    "get_state",
    "set_state",
    "storable_params",
]

KIND = "__kind__"
_LOADABLE: dict[str, type] = {}


def register_loadable(cls: type) -> type:
    """Allow model directories to hold instances of ``cls`` (a concealment step class), by class name.

    Loading rebuilds nested estimators only from registered classes, so a
    model file can never name arbitrary code to run. The package's own
    estimators and steps are registered; register your own step classes
    before saving or loading models that use them.
    """
    _LOADABLE[cls.__name__] = cls
    return cls


def loadable_classes() -> dict[str, type]:
    """The classes model directories may hold, by name."""
    return dict(_LOADABLE)


class TensorStore:
    """The tensors of a model directory, filled by :func:`encode`: equal tensors are stored once.

    ``concealed_network_`` repeats ``network_``'s encoder, for instance; the
    second occurrence is a reference to the first (by content, so the file is
    the same whether or not the two share memory, e.g. after a reload).
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[tuple, str] = {}

    def put(self, name: str, tensor: torch.Tensor) -> str:
        """Store ``tensor`` under ``name`` unless an equal one is stored; returns the name it is stored under."""
        tensor = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(tensor.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest() if tensor.numel() else ""
        key = (str(tensor.dtype), tuple(tensor.shape), digest)
        if key in self._names:
            return self._names[key]
        name = name.lstrip("/")
        self.tensors[name] = tensor
        self._names[key] = name
        return name


@dataclass(frozen=True)
class NetworkState:
    """A :class:`BAFONetwork` as plain data: its config and CPU weights (portable across devices)."""

    config: dict
    weights: dict[str, torch.Tensor]

    @classmethod
    def of(cls, network: BAFONetwork) -> "NetworkState":
        weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        return cls(network.config.to_dict(), weights)

    def build(self) -> BAFONetwork:
        network = BAFONetwork(NetworkConfig.from_dict(self.config))
        network.load_state_dict(self.weights)
        return network.eval()


def fitted_attribute_names(estimator) -> list[str]:
    """The attributes ``fit`` set: public names ending in ``_`` (scikit-learn's convention)."""
    return [name for name in vars(estimator) if name.endswith("_") and not name.startswith("_")]


def get_state(estimator) -> dict[str, Any]:
    """The fitted attributes, with networks as :class:`NetworkState` (CPU tensors); nested objects as they are."""
    return {name: _portable(getattr(estimator, name)) for name in fitted_attribute_names(estimator)}


def set_state(estimator, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`get_state`."""
    for name, value in state.items():
        setattr(estimator, name, _live(value))


def _portable(value):
    if isinstance(value, BAFONetwork):
        return NetworkState.of(value)
    if isinstance(value, list):
        return [_portable(v) for v in value]
    return value


def _live(value):
    if isinstance(value, NetworkState):
        return value.build()
    if isinstance(value, list):
        return [_live(v) for v in value]
    return value


# ------------------------------------------------------------------ model directory codec
def encode(value, store: TensorStore, path: str = "") -> Any:
    """``value`` as a JSON tree; arrays and weights go into ``store`` under names derived from ``path``.

    Raises
    ------
    TypeError
        For a value of a kind this module cannot store, naming where it sits.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {KIND: "tuple", "items": [encode(v, store, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, store, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or KIND in value:
            raise TypeError(f"{path or 'state'}: only dicts with string keys (other than {KIND!r}) can be stored")
        return {k: encode(v, store, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS":
            return {KIND: "strings", "values": [str(v) for v in value.tolist()]}
        return {KIND: "ndarray", "tensor": store.put(path, torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, np.dtype):
        return {KIND: "dtype", "name": value.str}
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, BAFONetwork):
        value = NetworkState.of(value)
    if isinstance(value, NetworkState):
        weights = {k: store.put(f"{path}/{k}", v) for k, v in value.weights.items()}
        return {KIND: "network", "config": value.config, "weights": weights}
    if isinstance(value, AttributeSchema):
        return {KIND: "attribute_schema", "schema": value.to_dict()}
    if isinstance(value, InputFormat):
        return {KIND: "input_format", "kind": value.kind, "shape": list(value.shape), "dtype": value.dtype}
    if hasattr(value, "get_params") and hasattr(value, "fit"):
        if _LOADABLE.get(type(value).__name__) is not type(value):
            raise TypeError(
                f"{path or 'state'}: a {type(value).__name__} could not be loaded back; "
                "register its class with bafo_pipeline.transformers.register_loadable first"
            )
        return {
            KIND: "estimator",
            "class": type(value).__name__,
            "params": encode(storable_params(value.get_params(deep=False)), store, f"{path}/params"),
            "state": encode(get_state(value), store, f"{path}/state"),
        }
    raise TypeError(f"{path or 'state'}: cannot store a {type(value).__name__} in a model directory")


def decode(tree, tensors: Mapping[str, torch.Tensor], classes: Mapping[str, type] | None = None) -> Any:
    """Inverse of :func:`encode`; nested estimators may only be of the given ``classes`` (by class name;
    default: the registered ones, see :func:`register_loadable`)."""
    classes = _LOADABLE if classes is None else classes
    if isinstance(tree, list):
        return [decode(v, tensors, classes) for v in tree]
    if not isinstance(tree, dict):
        return tree
    kind = tree.get(KIND)
    if kind is None:
        return {k: decode(v, tensors, classes) for k, v in tree.items()}
    if kind == "tuple":
        return tuple(decode(v, tensors, classes) for v in tree["items"])
    if kind == "strings":
        return np.asarray(tree["values"], dtype=object)
    if kind == "ndarray":
        return _get(tensors, tree["tensor"]).numpy().copy()  # a copy: equal arrays share one stored tensor
    if kind == "dtype":
        return np.dtype(tree["name"])
    if kind == "network":
        return NetworkState(tree["config"], {k: _get(tensors, name) for k, name in tree["weights"].items()}).build()
    if kind == "attribute_schema":
        return AttributeSchema.from_dict(tree["schema"])
    if kind == "input_format":
        return InputFormat(tree["kind"], tuple(tree["shape"]), tree["dtype"])
    if kind == "estimator":
        if tree["class"] not in classes:
            raise ValueError(f"a stored step is a {tree['class']!r}, which is not one of the loadable classes {sorted(classes)}")
        estimator = build_estimator(classes[tree["class"]], decode(tree["params"], tensors, classes))
        set_state(estimator, decode(tree["state"], tensors, classes))
        return estimator
    raise ValueError(f"unknown stored kind {kind!r}")


def build_estimator(cls: type, params: dict):
    """``cls(**params)``, where a parameter that ``params`` lacks (a model saved before it existed) takes the value
    in ``cls.params_before_added`` (what such models were fitted with) if the class names one, else its default."""
    return cls(**{**getattr(cls, "params_before_added", {}), **params})


def storable_params(params: dict) -> dict:
    """Estimator parameters as storable values: a device as its name; a RandomState instance cannot be stored
    and becomes None."""
    params = dict(params)
    if "device" in params and params["device"] is not None:
        params["device"] = str(params["device"])
    if "random_state" in params and not (
        params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))
    ):
        params["random_state"] = None
    return params


def _get(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"the weights file lacks the tensor {name!r} the config refers to")
    return tensors[name]
