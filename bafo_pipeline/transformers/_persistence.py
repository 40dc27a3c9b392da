"""Saving and loading a fitted BAFOTransformer as a directory: ``config.json`` + ``model.safetensors``.

safetensors holds only tensors, so loading a model file never executes code;
the JSON config holds the estimator's parameters, the network shape, the
attribute schema and the package version. A model fitted on a GPU loads on
the CPU (tensors are saved from the CPU).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._nn.network import BAFONetwork, NetworkConfig
from .._version import package_version
from ..attributes import AttributeSchema
from ._bafo import BAFOTransformer
from ._erasure import LinearErasure
from ._inputs import InputFormat

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "bafo-model"
FORMAT_VERSION = 1


def save_model(
    estimator: BAFOTransformer, path: str | os.PathLike, *, overwrite: bool = False, metadata: dict | None = None
) -> Path:
    """Write a fitted estimator to the directory ``path``, atomically.

    Parameters
    ----------
    estimator : BAFOTransformer
        Fitted.
    path : str or path-like
        Directory to create. The files are written into a temporary sibling
        directory that is renamed into place only when complete.
    overwrite : bool, default=False
        Replace an existing model directory (only a bafo model directory, or
        an empty one, is ever replaced).
    metadata : dict, optional
        JSON-ready facts to keep beside the model (e.g. how the data was split);
        read them back with :func:`read_model_config`.

    Returns
    -------
    pathlib.Path
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, state = _estimator_state(estimator, prefix="")
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        **state,
        "metadata": metadata or {},
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(tensors, staging / WEIGHTS_NAME)
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=_json_default))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_model(path: str | os.PathLike, *, device: str | None = None) -> BAFOTransformer:
    """Load a model directory written by :func:`save_model`.

    Parameters
    ----------
    path : str or path-like
    device : str, optional
        Override the stored ``device`` parameter (e.g. ``"cpu"``). By default
        the stored one is kept, except that a model saved with an explicit
        CUDA device falls back to ``"auto"`` (with a warning) where CUDA is
        not available.

    Returns
    -------
    BAFOTransformer
        Fitted, with its network on the CPU.

    Raises
    ------
    FileNotFoundError, ValueError
        For a directory that is not a readable bafo model (see
        :func:`read_model_config`), or weights that do not match the config.
    """
    path = Path(path)
    config = read_model_config(path)
    params = _tuples(dict(config["params"]))
    if "concealment" not in params:
        warnings.warn(
            f"{path} predates concealment: it loads with concealment='none' and its latents are not concealed; "
            "call fit_concealment(X, sensitive_features=...) after set_params(concealment='full') to add it",
            UserWarning,
            stacklevel=2,
        )
        params["concealment"] = "none"
    if device is not None:
        params["device"] = device
    elif str(params.get("device", "auto")).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"{path} was saved with device={params['device']!r}, which is not available here; using 'auto' (CPU)",
            UserWarning,
            stacklevel=2,
        )
        params["device"] = "auto"
    try:
        tensors = load_file(path / WEIGHTS_NAME, device="cpu")
        return _estimator_from_state(config, params, tensors, prefix="")
    except Exception as error:  # corrupt file, or weights of another shape than the config says
        raise ValueError(f"{path / WEIGHTS_NAME}: weights do not load into the configured model ({error})") from error


def _estimator_state(estimator: BAFOTransformer, prefix: str) -> tuple[dict, dict]:
    """Tensors (names under ``prefix``) and JSON config of a fitted estimator, its concealment steps included."""
    tensors = {f"{prefix}network.{k}": v.detach().cpu().contiguous() for k, v in estimator.network_.state_dict().items()}
    if not estimator.input_format_.is_image:
        tensors[f"{prefix}feature_mean"] = torch.from_numpy(np.asarray(estimator.feature_mean_, np.float32))
        tensors[f"{prefix}feature_scale"] = torch.from_numpy(np.asarray(estimator.feature_scale_, np.float32))
    config = {
        "params": _json_params(estimator.get_params()),
        "network": estimator.network_.config.to_dict(),
        "schema": None if estimator.schema_ is None else estimator.schema_.to_dict(),
        "input_format": {
            "kind": estimator.input_format_.kind,
            "shape": list(estimator.input_format_.shape),
            "dtype": estimator.input_format_.dtype,
        },
        "n_features_in": getattr(estimator, "n_features_in_", None),
        "feature_names_in": (
            None if getattr(estimator, "feature_names_in_", None) is None else list(estimator.feature_names_in_)
        ),
        "history": estimator.history_,
    }
    for name in ("erasure", "final_erasure"):
        erasure = getattr(estimator, f"{name}_", None)
        if erasure is not None:
            tensors[f"{prefix}{name}.mean"] = torch.from_numpy(np.ascontiguousarray(erasure.mean_, np.float64))
            tensors[f"{prefix}{name}.projection"] = torch.from_numpy(np.ascontiguousarray(erasure.projection_, np.float64))
            config[name] = {"params": _json_params(erasure.get_params()), "schema": erasure.schema_.to_dict()}
    label_map = getattr(estimator, "erased_label_map_", None)
    if label_map is not None:
        tensors[f"{prefix}erased_label_map"] = torch.from_numpy(np.ascontiguousarray(label_map, np.float64))
    concealed = getattr(estimator, "concealed_network_", None)
    if concealed is not None:  # only its decoder differs from network_
        for key, value in concealed.decoder.state_dict().items():
            tensors[f"{prefix}concealed_decoder.{key}"] = value.detach().cpu().contiguous()
    refiner = getattr(estimator, "refiner_", None)
    if refiner is not None:
        refiner_tensors, config["refiner"] = _estimator_state(refiner, prefix=f"{prefix}refiner.")
        tensors.update(refiner_tensors)
    return tensors, config


def _estimator_from_state(config: dict, params: dict, tensors: dict, prefix: str) -> BAFOTransformer:
    """Inverse of :func:`_estimator_state`."""
    estimator = BAFOTransformer(**params)
    network = BAFONetwork(NetworkConfig.from_dict(config["network"]))
    start = f"{prefix}network."
    network.load_state_dict({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)})
    estimator.network_ = network.eval()
    estimator.schema_ = None if config["schema"] is None else AttributeSchema.from_dict(config["schema"])
    fmt = config["input_format"]
    estimator.input_format_ = InputFormat(fmt["kind"], tuple(fmt["shape"]), fmt["dtype"])
    estimator.history_ = config.get("history", [])
    if config.get("n_features_in") is not None:
        estimator.n_features_in_ = int(config["n_features_in"])
    if config.get("feature_names_in") is not None:
        estimator.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
    if f"{prefix}feature_mean" in tensors:
        estimator.feature_mean_ = tensors[f"{prefix}feature_mean"].numpy()
        estimator.feature_scale_ = tensors[f"{prefix}feature_scale"].numpy()
    estimator.erasure_ = estimator.refiner_ = estimator.final_erasure_ = None
    label_map = tensors.get(f"{prefix}erased_label_map")  # absent in models saved before it existed
    estimator.erased_label_map_ = None if label_map is None else label_map.numpy()
    start = f"{prefix}concealed_decoder."
    decoder_state = {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
    estimator.concealed_network_ = None
    if decoder_state:
        concealed = copy.deepcopy(network)
        concealed.decoder.load_state_dict(decoder_state)
        estimator.concealed_network_ = concealed.eval()
    for name in ("erasure", "final_erasure"):
        if name in config:
            erasure = LinearErasure(**config[name]["params"])
            erasure.schema_ = AttributeSchema.from_dict(config[name]["schema"])
            erasure.mean_ = tensors[f"{prefix}{name}.mean"].numpy()
            erasure.projection_ = tensors[f"{prefix}{name}.projection"].numpy()
            erasure.n_features_in_ = len(erasure.mean_)
            setattr(estimator, f"{name}_", erasure)
    if "refiner" in config:
        refiner_params = _tuples(dict(config["refiner"]["params"]))
        refiner_params["device"] = params.get("device", "auto")
        estimator.refiner_ = _estimator_from_state(config["refiner"], refiner_params, tensors, f"{prefix}refiner.")
    return estimator


def _tuples(params: dict) -> dict:
    """JSON lists back to the tuples the estimator's parameters hold."""
    for key in ("image_shape", "widths"):
        if params.get(key) is not None:
            params[key] = tuple(params[key])
    return params


def read_model_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a model directory, checked for format and version.

    Raises
    ------
    FileNotFoundError
        When ``path`` lacks the config or the weights file.
    ValueError
        When the config is not valid JSON or not a supported bafo model format.
    """
    path = Path(path)
    config_path = path / CONFIG_NAME
    for required in (config_path, path / WEIGHTS_NAME):
        if not required.is_file():
            raise FileNotFoundError(f"{path} is not a bafo model directory: {required.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if config.get("format") != FORMAT_NAME or config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: not a bafo model of a supported format "
            f"(format={config.get('format')!r}, version={config.get('format_version')!r})"
        )
    return config


def model_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a saved model's weights file: identifies the exact model in exports."""
    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS_NAME, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_replaceable(path: Path) -> None:
    """Only a model directory (or an empty one) may be replaced: overwrite must never delete other data."""
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; refusing to replace it with a model directory")
    if any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise FileExistsError(f"{path} is a non-empty directory that is not a bafo model; refusing to replace it")
    if (path / CONFIG_NAME).is_file():
        try:
            is_model = json.loads((path / CONFIG_NAME).read_text()).get("format") == FORMAT_NAME
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            is_model = False
        if not is_model:
            raise FileExistsError(f"{path} holds a {CONFIG_NAME} that is not a bafo model's; refusing to replace it")


def _json_params(params: dict) -> dict:
    """Estimator parameters as JSON values; a RandomState instance cannot be stored and becomes None."""
    params = dict(params)
    if "device" in params:
        params["device"] = str(params["device"])
    if not (params.get("random_state") is None or isinstance(params["random_state"], (int, np.integer))):
        params["random_state"] = None
    return params


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a model config")
