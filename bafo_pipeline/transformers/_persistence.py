"""Model directories: ``config.json`` + ``model.safetensors`` + ``manifest.json``, for any fitted estimator.

safetensors holds only tensors, so loading a model file never executes code;
the JSON config holds the format, the package version, the class and
parameters of the estimator, its fitted state (the tensors by name; see
:mod:`._state`, the same state pickles hold) and free metadata. A model
fitted on a GPU loads on the CPU (tensors are saved from the CPU).

The manifest lists every file's SHA-256 (:mod:`._integrity`). Loading hashes
the very bytes it parses, refuses a directory that differs from its manifest,
and refuses a config whose concealment no longer describes the fitted steps;
:func:`load_verified_model` returns the fingerprint of what was loaded, which
exports record. Directories without a manifest (earlier releases) load with a
warning that their integrity cannot be verified.

Format versions: 2 (this one) stores the generic fitted state; 1 (written by
bafo-pipeline 0.1.0) listed the BAFOTransformer's attributes one by one and is
read by :func:`_estimator_from_v1`, frozen as that release wrote it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from .._nn.network import BAFONetwork, NetworkConfig
from .._utils import staging_directory
from .._version import package_version
from ..attributes import AttributeSchema
from ._inputs import InputFormat
from ._integrity import (
    MANIFEST_NAME,
    ModelIntegrityError,
    check_against_manifest,
    directory_digests,
    fingerprint_of,
    manifest_document,
    read_manifest,
    sha256_bytes,
    sha256_file,
)
from ._state import TensorStore, build_estimator, decode, encode, loadable_classes, set_state, storable_params
from ._steps import INHERITED_PARAMS, PRESET_STEP_PARAMS

__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "LoadedModel",
    "ModelIntegrityError",
    "describe_concealment",
    "describe_model",
    "load_model",
    "load_verified_model",
    "model_fingerprint",
    "read_model_config",
    "save_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "bafo-model"
FORMAT_VERSION = 2


def save_model(estimator, path: str | os.PathLike, *, overwrite: bool = False, metadata: dict | None = None) -> Path:
    """Write a fitted estimator to the directory ``path``, atomically.

    Parameters
    ----------
    estimator : BAFOTransformer
        Fitted (any fitted estimator of the package, or of a class registered
        with :func:`~bafo_pipeline.transformers.register_loadable`).
    path : str or path-like
        Directory to create. The files are written into a locked, hidden sibling
        directory that is renamed into place only when complete; one left by a
        killed save is removed by the next save to the same path.
    overwrite : bool, default=False
        Replace an existing model directory (only a bafo model directory, or
        an empty one, is ever replaced).
    metadata : dict, optional
        JSON-ready facts to keep beside the model (e.g. how the data was split);
        read them back with :func:`read_model_config`.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    TypeError
        When the estimator holds a fitted attribute of a kind that cannot be
        stored (the message names it).
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    if type(estimator).__name__ not in loadable_classes():
        raise TypeError(f"a {type(estimator).__name__} cannot be saved as a model directory; register its class first")
    path = Path(path)
    mismatch = _concealment_mismatch(estimator, compare_params=True, where=path)
    if mismatch is not None:  # load_model would refuse the directory
        raise ValueError(
            f"the concealment parameters were changed after fitting: {mismatch}. Refit the concealment "
            "(fit_concealment(X, sensitive_features=...)) or set the parameters back before saving"
        )
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
        _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = TensorStore()
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "class": type(estimator).__name__,
        "params": encode(storable_params(estimator.get_params(deep=False)), store, "params"),
        "state": encode(estimator._get_state(), store, "state"),
        "metadata": metadata or {},
    }
    with staging_directory(path) as staging:
        save_file(store.tensors, staging / WEIGHTS_NAME)
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        digests = {name: sha256_file(staging / name) for name in (CONFIG_NAME, WEIGHTS_NAME)}
        (staging / MANIFEST_NAME).write_text(manifest_document(digests))
        if path.exists():
            old = _replaced_model_folder(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    return path


@dataclass
class LoadedModel:
    """A model loaded from a directory, with the identity of exactly what was loaded.

    Attributes
    ----------
    estimator : BAFOTransformer
        Fitted, with its networks on the CPU.
    fingerprint : str
        SHA-256 over the digests of every file of the directory (config included),
        computed from the bytes that were parsed; see :func:`model_fingerprint`.
    verified : bool
        True when the directory has a manifest and every file matched it; False for
        a directory of an earlier release, which has none.
    concealment : dict
        What the fitted model conceals with: :func:`describe_concealment`.
    metadata : dict
        The free metadata saved with the model (how the data was split, ...).
    path : Path
    """

    estimator: Any
    fingerprint: str
    verified: bool
    concealment: dict
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    def provenance(self) -> dict:
        """What exported latents record about the model: ``model_fingerprint``, ``model_verified``,
        ``concealment``."""
        return {"model_fingerprint": self.fingerprint, "model_verified": self.verified, "concealment": self.concealment}


def load_verified_model(path: str | os.PathLike, *, device: str | None = None) -> LoadedModel:
    """Load a model directory, checking its integrity, and say what was loaded.

    The config and the weights are read once; their digests (and those of any other
    file) are checked against ``manifest.json`` and give the fingerprint, so what
    was checked is what was parsed.

    Parameters
    ----------
    path : str or path-like
    device : str, optional
        As in :func:`load_model`.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelIntegrityError
        (a ``ValueError``) When the files differ from the manifest (a file edited,
        added or removed after saving), or when the config's concealment does not
        describe the concealment steps the model was fitted with.
    FileNotFoundError, ValueError
        For a directory that is not a readable bafo model, or weights that do not
        match the config.
    """
    path = Path(path)
    config_path = _model_config_path(path)
    listed = read_manifest(path)
    config_bytes = config_path.read_bytes()
    weights_bytes = (path / WEIGHTS_NAME).read_bytes()
    digests = directory_digests(path)
    digests[CONFIG_NAME], digests[WEIGHTS_NAME] = sha256_bytes(config_bytes), sha256_bytes(weights_bytes)
    if listed is None:
        warnings.warn(
            f"{path} has no {MANIFEST_NAME} (written before bafo-pipeline recorded one): its integrity cannot "
            "be verified. Re-save it with save_model to add one",
            UserWarning,
            stacklevel=2,
        )
    else:
        check_against_manifest(path, listed, digests)
    config = _parse_config(config_path, config_bytes)
    try:
        tensors = load_tensors(weights_bytes)
        if config.get("format_version", 1) < 2:
            estimator = _estimator_from_v1(path, config, tensors)
        else:
            classes = loadable_classes()
            if config.get("class") not in classes:
                raise ValueError(f"the model is a {config.get('class')!r}, not one of {sorted(classes)}")
            estimator = build_estimator(classes[config["class"]], decode(config["params"], tensors, classes))
            set_state(estimator, decode(config["state"], tensors, classes))
    except Exception as error:  # corrupt file, or weights of another shape than the config says
        raise ValueError(f"{path / WEIGHTS_NAME}: weights do not load into the configured model ({error})") from error
    _check_concealment(path, estimator, compare_params=config.get("format_version", 1) >= 2)
    stored = str(estimator.get_params().get("device", "auto"))
    if device is None and stored.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"{path} was saved with device={stored!r}, which is not available here; using 'auto' (CPU)",
            UserWarning,
            stacklevel=2,
        )
        device = "auto"
    if device is not None:
        _set_device(estimator, device)
    return LoadedModel(
        estimator=estimator,
        fingerprint=fingerprint_of(digests),
        verified=listed is not None,
        concealment=describe_concealment(estimator),
        metadata=dict(config.get("metadata") or {}),
        path=path,
    )


def load_model(path: str | os.PathLike, *, device: str | None = None):
    """Load a model directory written by :func:`save_model` (this release's or 0.1.0's format).

    Parameters
    ----------
    path : str or path-like
    device : str, optional
        Override the stored ``device`` parameter (e.g. ``"cpu"``), of the
        estimator and of its concealment steps. By default the stored one is
        kept, except that a model saved with an explicit CUDA device falls
        back to ``"auto"`` (with a warning) where CUDA is not available.

    Returns
    -------
    BAFOTransformer
        Fitted, with its networks on the CPU.

    Raises
    ------
    ModelIntegrityError
        (a ``ValueError``) For a directory whose files changed after saving, or
        whose config's concealment does not match the fitted steps; see
        :func:`load_verified_model`, which also returns the fingerprint.
    FileNotFoundError, ValueError
        For a directory that is not a readable bafo model (see
        :func:`read_model_config`), or weights that do not match the config.
    """
    return load_verified_model(path, device=device).estimator


def describe_concealment(estimator) -> dict:
    """What a fitted estimator conceals with, for metadata and receipts.

    Returns
    -------
    dict
        ``setting``: the ``concealment`` parameter (a preset name, or ``"steps"``
        for a list); ``steps``: the class names of the fitted steps, in order
        (empty when nothing is concealed).
    """
    setting = estimator.get_params(deep=False).get("concealment", "none")
    steps = getattr(estimator, "concealment_steps_", None) or []
    return {
        "setting": setting if isinstance(setting, str) else "steps",
        "steps": [type(step).__name__ for step in steps],
    }


def describe_model(estimator) -> dict:
    """What a latent file records about the fitted estimator that encoded it.

    Returns
    -------
    dict
        ``concealment``: :func:`describe_concealment`; ``attribute_schema``: the
        fitted attributes (``AttributeSchema.to_dict()``), or None for a model
        fitted without them.
    """
    schema = getattr(estimator, "schema_", None)
    return {"concealment": describe_concealment(estimator),
            "attribute_schema": None if schema is None else schema.to_dict()}


def _check_concealment(path: Path, estimator, *, compare_params: bool) -> None:
    """Refuse a config whose concealment does not describe the fitted steps (e.g. edited to ``"none"``)."""
    mismatch = _concealment_mismatch(estimator, compare_params=compare_params, where=path)
    if mismatch is not None:
        raise ModelIntegrityError(
            f"{path}: its config says {mismatch}; the config was changed after fitting. Refusing to load a model whose "
            "concealment does not match what was fitted and audited"
        )


def _concealment_mismatch(estimator, *, compare_params: bool, where) -> str | None:
    """How the estimator's concealment parameters differ from its fitted steps (None: they agree)."""
    if not hasattr(estimator, "concealment_steps"):
        return None
    fitted = list(getattr(estimator, "concealment_steps_", None) or [])
    if getattr(estimator, "schema_", None) is None:
        described = []  # no sensitive attributes: nothing is ever fitted to conceal
    else:
        try:
            described = estimator.concealment_steps()
        except (TypeError, ValueError) as error:
            raise ModelIntegrityError(f"{where}: the concealment parameter cannot be read ({error})") from None

    def names(steps):
        return "[" + ", ".join(type(step).__name__ for step in steps) + "]"

    setting = estimator.get_params(deep=False).get("concealment")
    mismatch = len(described) != len(fitted) or any(type(a) is not type(b) for a, b in zip(described, fitted))
    differing = []
    if not mismatch and compare_params:
        for wanted, have in zip(described, fitted):
            own, actual = wanted.get_params(deep=False), have.get_params(deep=False)
            if isinstance(setting, str):  # a preset: the parameters it sets, not the steps' defaults of the day
                own = {key: own[key] for key in PRESET_STEP_PARAMS.get(type(wanted).__name__, own) if key in own}
            for key, value in own.items():
                if key == "device" or (key in INHERITED_PARAMS and value is None):
                    continue
                if not _same_value(value, actual.get(key)):
                    mismatch = True
                    differing.append(f"{type(wanted).__name__}.{key}: config {value!r}, fitted {actual.get(key)!r}")
    if not mismatch:
        return None
    detail = f" ({'; '.join(differing)})" if differing else ""
    return f"concealment={setting!r} means {names(described)}, but the model was fitted with {names(fitted)}{detail}"


def _same_value(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # arrays and other values without a plain equality: compare their text
        return repr(a) == repr(b)


def _set_device(estimator, device: str) -> None:
    """``device`` for the estimator and every fitted step (and step model) that has a device parameter."""
    if "device" in estimator.get_params(deep=False):
        estimator.set_params(device=device)
    for step in getattr(estimator, "concealment_steps_", None) or []:
        _set_device(step, device)
    inner = getattr(estimator, "model_", None)
    if inner is not None:
        _set_device(inner, device)


# ----------------------------------------------------------------- format version 1 (0.1.0)
def _estimator_from_v1(path: Path, config: dict, tensors: dict):
    """A BAFOTransformer from a directory written by bafo-pipeline 0.1.0 (format version 1)."""
    params = _tuples(dict(config["params"]))
    if "concealment" not in params:
        warnings.warn(
            f"{path} predates concealment: it loads with concealment='none' and its latents are not concealed; "
            "call fit_concealment(X, sensitive_features=...) after set_params(concealment='full') to add it",
            UserWarning,
            stacklevel=3,
        )
        params["concealment"] = "none"
    return _v1_state(config, params, tensors, prefix="")


def _v1_state(config: dict, params: dict, tensors: dict, prefix: str):
    """Version 1 stored these attributes of a BAFOTransformer, and its concealment steps by role."""
    classes = loadable_classes()
    estimator = classes["BAFOTransformer"](**params)
    network = BAFONetwork(NetworkConfig.from_dict(config["network"]))
    start = f"{prefix}network."
    network.load_state_dict({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)})
    fitted = {
        "network_": network.eval(),
        "schema_": None if config["schema"] is None else AttributeSchema.from_dict(config["schema"]),
        "input_format_": InputFormat(
            config["input_format"]["kind"], tuple(config["input_format"]["shape"]), config["input_format"]["dtype"]
        ),
        "history_": config.get("history", []),
    }
    if config.get("n_features_in") is not None:
        fitted["n_features_in_"] = int(config["n_features_in"])
    if config.get("feature_names_in") is not None:
        fitted["feature_names_in_"] = np.asarray(config["feature_names_in"], dtype=object)
    if f"{prefix}feature_mean" in tensors:
        fitted["feature_mean_"] = tensors[f"{prefix}feature_mean"].numpy()
        fitted["feature_scale_"] = tensors[f"{prefix}feature_scale"].numpy()
    label_map = tensors.get(f"{prefix}erased_label_map")
    fitted["erased_label_map_"] = None if label_map is None else label_map.numpy()
    start = f"{prefix}concealed_decoder."
    decoder_state = {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
    fitted["concealed_network_"] = None
    if decoder_state:  # only its decoder differs from network_
        concealed = copy.deepcopy(network)
        concealed.decoder.load_state_dict(decoder_state)
        fitted["concealed_network_"] = concealed.eval()
    steps = []
    if "erasure" in config:
        steps.append(_v1_erasure(config["erasure"], tensors, f"{prefix}erasure"))
    if "refiner" in config:
        refiner_params = _tuples(dict(config["refiner"]["params"]))
        refiner_params["device"] = params.get("device", "auto")
        model = _v1_state(config["refiner"], refiner_params, tensors, f"{prefix}refiner.")
        step = classes["LatentRefiner"](
            epochs=refiner_params["epochs"], adversary_weight=refiner_params["adversary_weight"],
            batch_size=refiner_params["batch_size"], learning_rate=refiner_params["learning_rate"],
            adversary_steps=refiner_params["adversary_steps"], validation_fraction=refiner_params["validation_fraction"],
            attribute_kinds=refiner_params["attribute_kinds"], device=refiner_params["device"],
            random_state=refiner_params["random_state"],
        )
        set_state(step, {"model_": model, "n_features_in_": model.n_features_in_})
        steps.append(step)
    if "final_erasure" in config:
        steps.append(_v1_erasure(config["final_erasure"], tensors, f"{prefix}final_erasure"))
    fitted["concealment_steps_"] = steps
    set_state(estimator, fitted)
    return estimator


def _v1_erasure(config: dict, tensors: dict, name: str):
    erasure = loadable_classes()["LinearErasure"](**config["params"])
    mean = tensors[f"{name}.mean"].numpy()
    set_state(erasure, {
        "schema_": AttributeSchema.from_dict(config["schema"]),
        "mean_": mean,
        "projection_": tensors[f"{name}.projection"].numpy(),
        "n_features_in_": len(mean),
    })
    return erasure


def _tuples(params: dict) -> dict:
    """JSON lists back to the tuples the estimator's parameters hold."""
    for key in ("image_shape", "widths"):
        if params.get(key) is not None:
            params[key] = tuple(params[key])
    return params


def _replaced_model_folder(path: Path) -> Path:
    """Where :func:`save_model` parks the model it replaces until the new one is in place."""
    return path.with_name(f".{path.name}.old")


def _model_config_path(path: Path) -> Path:
    """The config file of the model folder ``path``, after checking that the folder holds a model."""
    replaced = _replaced_model_folder(path)
    if not path.exists() and replaced.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist, but {replaced} does: a save that was replacing the model was stopped "
            f"between its two renames; the previous model is intact there (rename it back to {path.name})"
        )
    config_path = path / CONFIG_NAME
    for required in (config_path, path / WEIGHTS_NAME):
        if not required.is_file():
            raise FileNotFoundError(f"{path} is not a bafo model directory: {required.name} is missing")
    return config_path


def read_model_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a model directory, checked for format and version (not for integrity:
    :func:`load_verified_model` does that).

    Raises
    ------
    FileNotFoundError
        When ``path`` lacks the config or the weights file.
    ValueError
        When the config is not valid JSON or not a supported bafo model format.
    """
    path = Path(path)
    config_path = _model_config_path(path)
    return _parse_config(config_path, config_path.read_bytes())


def _parse_config(config_path: Path, raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: not a bafo model config (a JSON {type(config).__name__}, not an object)")
    if config.get("format") != FORMAT_NAME or not isinstance(config.get("format_version", 0), int) or (
        config.get("format_version", 0) > FORMAT_VERSION
    ):
        raise ValueError(
            f"{config_path}: not a bafo model of a supported format "
            f"(format={config.get('format')!r}, version={config.get('format_version')!r})"
        )
    return config


def model_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of a model directory: SHA-256 over the digests of all its files, config included.

    It changes when any file changes, is added or removed, so exports and audit
    receipts that record it name exactly one model. For an intact directory it
    equals :attr:`LoadedModel.fingerprint`. (bafo-pipeline 0.1 hashed the weights
    file only.)
    """
    return fingerprint_of(directory_digests(path))


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
