"""Independent judges: a CNN that predicts age, gender and ethnicity from face images.

Benchmark tooling (used by ``reproduce_paper.py``), not part of the package.

The paper checked its decoded faces with outside models (a commercial gender API
and an age classifier with RMSE 6.75). :class:`FaceJudge` plays that role here:
a separate network, sharing nothing with the BAFO encoder, trained on real
training images and scored on real test images first (its own accuracy and age
RMSE are the yardstick for every number it later gives on decoded images).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from bafo_pipeline._utils import resolve_device
from bafo_pipeline._utils.params import Interval, check_parameters
from bafo_pipeline.attributes import DEFAULT_SENSITIVE, infer_kind

__all__ = ["FaceJudge", "JudgeNetwork"]

DEFAULT_TARGETS = DEFAULT_SENSITIVE
_MAX_CATEGORIES = 64


class JudgeNetwork(nn.Module):
    """Conv stages (3x3 conv, batch norm, ReLU, 2x2 max-pool), then one linear head per target.

    The heads read the flattened final feature map rather than its global
    average: faces are aligned, so where a cue sits (beard, brow, hair line)
    carries information an average would throw away.

    Parameters
    ----------
    channels : int
        Input channels.
    image_size : (int, int)
        Input height and width.
    widths : tuple of int
        Output channels of each stage.
    head_sizes : dict of str to int
        Output width of each head (number of classes; 1 for a regression target).
    dropout : float
        Dropout before the heads.
    """

    def __init__(
        self,
        channels: int,
        image_size: tuple[int, int],
        widths: tuple[int, ...],
        head_sizes: dict[str, int],
        dropout: float = 0.2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        previous = channels
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        factor = 2 ** len(widths)
        n_features = previous * (image_size[0] // factor) * (image_size[1] // factor)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(n_features, size) for name, size in head_sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs: logits for classes, a standardised value for regression."""
        h = self.dropout(self.features(x).flatten(1))
        return {name: head(h) for name, head in self.heads.items()}


class FaceJudge(BaseEstimator):
    """A small CNN that predicts each target attribute of a face image.

    One shared trunk with a head per target: cross-entropy for categorical
    targets (gender, ethnicity), a Huber loss on the standardised value for
    continuous ones (age). A target's kind is the package's one rule
    (:func:`bafo_pipeline.attributes.infer_kind`: numeric with more than 10
    distinct values is continuous), binary read as categorical.

    Parameters
    ----------
    targets : sequence of str, optional
        Columns of ``y`` to learn; default: whichever of ``age``, ``gender``,
        ``ethnicity`` are present.
    widths : tuple of int, default=(32, 64, 128, 256)
        Channels of the conv stages; each stage halves the image size.
    epochs : int, default=10
    batch_size : int, default=128
    learning_rate : float, default=3e-3
        Peak step size of AdamW (one-cycle schedule).
    weight_decay : float, default=5e-4
    augment : bool, default=True
        Random horizontal flips, shifts of up to 3 pixels and, for half of
        each batch, a Gaussian blur (sigma 0.5-2 pixels at 56x56). The blur keeps the
        judge from reading softness as an attribute: it later scores decoded
        images, which are much softer than photographs.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState or None
    verbose : int, default=0
        ``> 0`` shows a progress bar over epochs.

    Attributes
    ----------
    network_ : JudgeNetwork
    kinds_ : dict of str to str
        ``"categorical"`` or ``"continuous"`` per target.
    classes_ : dict of str to ndarray
        Class labels of each categorical target, in head order.
    target_center_, target_scale_ : dict of str to float
        Standardisation of each continuous target.
    target_range_ : dict of str to (float, float)
        Training range of each continuous target; predictions are clipped to it.
    image_shape_ : tuple of int
        ``(height, width, channels)`` seen in ``fit``.
    history_ : list of dict
        Per-epoch mean training loss.

    Examples
    --------
    >>> from bafo_pipeline import make_synthetic_faces
    >>> faces = make_synthetic_faces(128, random_state=0)
    >>> judge = FaceJudge(epochs=1, widths=(8, 16), random_state=0).fit(faces.images, faces.sensitive_features)
    >>> list(judge.predict(faces.images[:2]).columns)
    ['age', 'gender', 'ethnicity']
    """

    _parameter_rules: dict = {
        "targets": [list, tuple, None],
        "widths": [list, tuple],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean"],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        targets: tuple[str, ...] | None = None,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        epochs: int = 10,
        batch_size: int = 128,
        learning_rate: float = 3e-3,
        weight_decay: float = 5e-4,
        augment: bool = True,
        device: str = "auto",
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.targets = targets
        self.widths = widths
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.augment = augment
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X, y: pd.DataFrame) -> FaceJudge:
        """Train the judge on real images and their labels.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, C)
            uint8 images (or float in [0, 1]), NHWC.
        y : DataFrame of n rows
            The target columns.

        Returns
        -------
        self : FaceJudge
        """
        check_parameters(self)
        images = _check_images(X)
        if not isinstance(y, pd.DataFrame):
            raise TypeError(f"y must be a pandas DataFrame of target columns, got {type(y).__name__}")
        if len(y) != len(images):
            raise ValueError(f"y has {len(y)} rows but X has {len(images)} images")
        if len(images) < 2:
            raise ValueError(f"FaceJudge needs at least 2 images to fit, got {len(images)}")
        y = y.reset_index(drop=True)
        targets = list(self.targets) if self.targets is not None else [t for t in DEFAULT_TARGETS if t in y.columns]
        if not targets:
            raise ValueError(f"no targets: pass targets=, or give y columns among {DEFAULT_TARGETS}")
        missing = [t for t in targets if t not in y.columns]
        if missing:
            raise ValueError(f"target columns {missing} are not in y (columns: {list(y.columns)})")
        factor = 2 ** len(self.widths)
        if min(images.shape[1:3]) < factor:
            raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} are too small for {len(self.widths)} stages")

        self.kinds_, self.classes_ = {}, {}
        self.target_center_, self.target_scale_, self.target_range_ = {}, {}, {}
        encoded: dict[str, np.ndarray] = {}
        for name in targets:
            column = y[name]
            if column.isna().any():
                raise ValueError(f"target {name!r}: missing value in row {int(np.argmax(column.isna().to_numpy()))}")
            if infer_kind(column) == "continuous":
                values = column.to_numpy(dtype=np.float64)
                center, scale = float(np.median(values)), float(values.std()) or 1.0
                self.kinds_[name] = "continuous"
                self.target_center_[name], self.target_scale_[name] = center, scale
                self.target_range_[name] = (float(values.min()), float(values.max()))
                encoded[name] = ((values - center) / scale).astype(np.float32)
            else:
                classes, codes = np.unique(column.to_numpy(), return_inverse=True)
                if len(classes) < 2:
                    raise ValueError(f"target {name!r} has a single class {classes[0]!r}; nothing to learn")
                if len(classes) > _MAX_CATEGORIES:
                    raise ValueError(f"target {name!r} has {len(classes)} classes; at most {_MAX_CATEGORIES}")
                self.kinds_[name] = "categorical"
                self.classes_[name] = classes
                encoded[name] = codes.astype(np.int64)

        self.image_shape_ = tuple(int(s) for s in images.shape[1:])
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        device = resolve_device(self.device)
        # Initialisation and dropout draw from torch's global generator: seed it, and leave the caller's untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            network = JudgeNetwork(images.shape[3], images.shape[1:3], tuple(self.widths), self._head_sizes())
            network, self.history_ = _train(network, images, encoded, self.kinds_, self._train_config(), seed, device)
        self.network_ = network.cpu().eval()
        return self

    def _head_sizes(self) -> dict[str, int]:
        return {n: (len(self.classes_[n]) if k == "categorical" else 1) for n, k in self.kinds_.items()}

    def _train_config(self) -> dict:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "augment": self.augment,
            "verbose": self.verbose,
        }

    # ------------------------------------------------------------- predict
    def _outputs(self, X, batch_size: int = 512) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        images = _check_images(X)
        if images.shape[1:] != self.image_shape_:
            raise ValueError(f"expected images of shape (n, {', '.join(map(str, self.image_shape_))}), got {images.shape}")
        device = resolve_device(self.device)
        network = self.network_.to(device).eval()
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.kinds_}
        try:
            with torch.inference_mode():
                for start in range(0, len(images), batch_size):
                    x = _to_input(torch.from_numpy(images[start : start + batch_size]).to(device))
                    for name, out in network(x).items():
                        if self.kinds_[name] == "categorical":
                            chunks[name].append(torch.softmax(out.float(), dim=1).cpu().numpy())
                        else:
                            chunks[name].append(out.float()[:, 0].cpu().numpy())
        finally:
            self.network_ = network.cpu()
        return {
            name: np.concatenate(parts) if parts else np.zeros((0, self._head_sizes()[name]), np.float32)
            for name, parts in chunks.items()
        }

    def predict_proba(self, X) -> dict[str, pd.DataFrame]:
        """Class probabilities of every categorical target.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, C)

        Returns
        -------
        dict of str to DataFrame
            One DataFrame per categorical target, one column per class.
        """
        outputs = self._outputs(X)
        return {
            name: pd.DataFrame(outputs[name], columns=list(self.classes_[name]))
            for name, kind in self.kinds_.items()
            if kind == "categorical"
        }

    def predict(self, X) -> pd.DataFrame:
        """Predicted value of every target.

        Parameters
        ----------
        X : ndarray of shape (n, H, W, C)

        Returns
        -------
        DataFrame of n rows
            One column per target: the most probable class of a categorical
            target, the predicted value (clipped to the training range) of a
            continuous one.
        """
        outputs = self._outputs(X)
        columns = {}
        for name, kind in self.kinds_.items():
            if kind == "categorical":
                columns[name] = self.classes_[name][outputs[name].argmax(axis=1)] if len(outputs[name]) else []
            else:
                low, high = self.target_range_[name]
                values = outputs[name] * self.target_scale_[name] + self.target_center_[name]
                columns[name] = np.clip(values, low, high)
        return pd.DataFrame(columns)

    def evaluate(self, X, y: pd.DataFrame) -> dict[str, dict[str, float]]:
        """The judge's own scores on labeled images (its yardstick).

        Parameters
        ----------
        X : ndarray of shape (n, H, W, C)
        y : DataFrame of n rows with the target columns

        Returns
        -------
        dict
            Per target: ``accuracy`` and ``balanced_accuracy`` (categorical), or
            ``rmse``, ``mae`` and ``bias`` (mean prediction minus truth;
            continuous); and ``n``.
        """
        missing = [t for t in self.kinds_ if t not in y.columns]
        if missing:
            raise ValueError(f"y lacks the target columns {missing}")
        predicted = self.predict(X)
        y = y.reset_index(drop=True)
        scores: dict[str, dict[str, float]] = {}
        for name, kind in self.kinds_.items():
            truth, guess = y[name].to_numpy(), predicted[name].to_numpy()
            if kind == "categorical":
                scores[name] = {
                    "accuracy": float(np.mean(truth == guess)),
                    "balanced_accuracy": float(balanced_accuracy_score(truth.astype(str), guess.astype(str))),
                    "n": len(truth),
                }
            else:
                error = guess.astype(np.float64) - truth.astype(np.float64)
                scores[name] = {
                    "rmse": float(np.sqrt(np.mean(error**2))),
                    "mae": float(np.mean(np.abs(error))),
                    "bias": float(np.mean(error)),
                    "n": len(truth),
                }
        return scores


def _check_images(X) -> np.ndarray:
    """Images as a C-contiguous uint8 NHWC array; float pixels must lie in [0, 1]."""
    images = np.asarray(X)
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"X must be NHWC images of shape (n, height, width, 1 or 3), got shape {images.shape}")
    if images.dtype.kind == "f":
        flat = images.reshape(len(images), -1)
        bad = ~np.isfinite(flat).all(axis=1) | (flat.min(axis=1, initial=0) < 0) | (flat.max(axis=1, initial=0) > 1)
        if bad.any():
            raise ValueError(f"X row {int(np.argmax(bad))}: float pixels must be finite and lie in [0, 1]")
        images = np.rint(images * 255).astype(np.uint8)
    elif images.dtype != np.uint8:
        raise ValueError(f"image pixels must be uint8 or float in [0, 1]; got dtype {images.dtype}")
    return np.ascontiguousarray(images)


def _to_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [0, 1], channels_last memory."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype, radius: int = 3) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a float NCHW batch (edges replicated)."""
    channels = x.shape[1]
    kernel = _gaussian_kernel(sigma, x.device, x.dtype)
    radius = len(kernel) // 2
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                 groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                    groups=channels)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image horizontal flips, one random shift per batch, a Gaussian blur on half of the images.

    The blur (one strength per batch, sigma 0.5-2 pixels at 56x56, scaled with
    the image size) is there because
    the judge later scores decoded faces, which are much softer than photographs:
    a judge that never saw a soft face reads softness as an attribute (in our
    trials, as "female" and "older").
    """
    n = len(x)
    device = x.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=generator, device=device))
    if dy or dx:
        padded = F.pad(x, (3, 3, 3, 3), mode="replicate")
        x = padded[:, :, 3 + dy : 3 + dy + x.shape[2], 3 + dx : 3 + dx + x.shape[3]]
    blur = torch.rand(n, generator=generator, device=device) < 0.5
    sigma = (0.5 + 1.5 * float(torch.rand((), generator=generator, device=device))) * min(x.shape[2:]) / 56
    x = torch.where(blur[:, None, None, None], _blur(x, sigma), x)
    return x.contiguous(memory_format=torch.channels_last)


def _train(
    network: JudgeNetwork,
    images: np.ndarray,
    targets: dict[str, np.ndarray],
    kinds: dict[str, str],
    config: dict,
    seed: int,
    device: torch.device,
) -> tuple[JudgeNetwork, list[dict]]:
    """AdamW with a one-cycle schedule on the sum of the per-target losses; returns the network and its history."""
    network = network.to(device).to(memory_format=torch.channels_last)
    x_all = torch.from_numpy(images).to(device)
    y_all = {name: torch.from_numpy(values).to(device) for name, values in targets.items()}
    n = len(x_all)
    batch_size = min(config["batch_size"], n)
    steps_per_epoch = max(1, n // batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["learning_rate"], total_steps=config["epochs"] * steps_per_epoch, pct_start=0.2
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    history: list[dict] = []
    bar = None
    if config["verbose"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=config["epochs"], desc="judge", unit="epoch")
    try:
        for epoch in range(config["epochs"]):
            network.train()
            order = torch.randperm(n, generator=generator, device=device)
            total = torch.zeros((), device=device)
            for step in range(steps_per_epoch):  # whole batches only: batch norm needs more than one image
                index = order[step * batch_size : (step + 1) * batch_size]
                x = _to_input(x_all[index])
                if config["augment"]:
                    x = _augment(x, generator)
                outputs = network(x)
                loss = sum(
                    F.cross_entropy(outputs[name], y_all[name][index])
                    if kinds[name] == "categorical"
                    else F.smooth_l1_loss(outputs[name][:, 0], y_all[name][index])
                    for name in kinds
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()
            history.append({"epoch": epoch + 1, "loss": float(total) / steps_per_epoch})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    finally:
        if bar is not None:
            bar.close()
    return network, history
