"""A small torch MLP probe (classifier or regressor) with early stopping on an inner split."""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .._utils.device import resolve_device
from .._utils.params import Interval, StrOptions, checks_parameters

__all__ = ["TorchMLPProbe", "resolve_device"]


def _is_classifier(probe: "TorchMLPProbe") -> bool:
    return probe.task == "classification"


class TorchMLPProbe(BaseEstimator):
    """Two-hidden-layer ReLU network trained with AdamW, stopped early on held-out loss.

    The early-stopping split is carved out of the data given to :meth:`fit` (the
    probe's training fold), never from the audit's test fold. Inputs are
    standardised with the training statistics; regression targets too.

    A scikit-learn estimator: a classifier when ``task="classification"``, a
    regressor when ``task="regression"`` (its tags say which), so it clones,
    pickles, and works with ``cross_val_predict`` and the like.

    Parameters
    ----------
    task : {"classification", "regression"}
    hidden : tuple of int, default=(128, 128)
        Hidden layer widths.
    lr : float, default=2e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
    batch_size : int, default=512
        Upper bound; small training sets use ``n_train // 8`` (at least 32) so they
        still get several steps per epoch.
    max_epochs : int, default=200
    patience : int, default=5
        Epochs without improvement of the validation loss before stopping; the best
        weights are restored.
    validation_fraction : float, default=0.15
    device : str, default="auto"
        ``"auto"`` uses CUDA when available.
    random_state : int, default=0

    Attributes
    ----------
    classes_ : ndarray
        Class labels (classification).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Input standardisation.
    y_mean_, y_scale_ : float
        Target standardisation (regression).
    net_ : torch.nn.Sequential
        The trained network (the weights of its best epoch).
    device_ : torch.device
    n_epochs_ : int
        Epochs run.
    best_epoch_ : int
        Epoch whose weights were kept.
    """

    _parameter_rules: dict = {
        "task": [StrOptions({"classification", "regression"})],
        "hidden": [tuple, list],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both")],
    }

    def __init__(
        self,
        task: str = "classification",
        hidden: tuple[int, ...] = (128, 128),
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 512,
        max_epochs: int = 200,
        patience: int = 5,
        validation_fraction: float = 0.15,
        device: str = "auto",
        random_state: int = 0,
    ) -> None:
        self.task = task
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def _split(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(y)
        n_val = max(1, int(round(self.validation_fraction * n)))
        if self.task == "classification":
            # Stratified: take the same fraction of every class.
            val = []
            for c in np.unique(y):
                idx = rng.permutation(np.flatnonzero(y == c))
                take = int(round(self.validation_fraction * len(idx)))
                if 0 < take < len(idx):
                    val.append(idx[:take])
            val = np.concatenate(val) if val else rng.permutation(n)[:n_val]
        else:
            val = rng.permutation(n)[:n_val]
        mask = np.zeros(n, dtype=bool)
        mask[val] = True
        return np.flatnonzero(~mask), np.flatnonzero(mask)

    @checks_parameters
    def fit(self, X, y) -> TorchMLPProbe:
        """Train on ``X`` (n, d) and labels or targets ``y`` (n,).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (classification) or numeric targets (regression).

        Returns
        -------
        self : TorchMLPProbe
        """
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h > 0 for h in self.hidden):
            raise ValueError(f"hidden must hold positive layer widths, got {self.hidden!r}")
        classify = _is_classifier(self)
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2, y_numeric=not classify)
        if classify:
            check_classification_targets(y)
        rng = np.random.default_rng(self.random_state)
        device = resolve_device(self.device)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        if self.task == "classification":
            self.classes_, codes = np.unique(y, return_inverse=True)
            target = torch.as_tensor(codes, dtype=torch.long)
            n_out = len(self.classes_)
            loss_fn = nn.functional.cross_entropy
        else:
            y = np.asarray(y, dtype=np.float64)
            self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std() or 1.0)
            target = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
            n_out = 1

            def loss_fn(out, t):
                return nn.functional.mse_loss(out.squeeze(1), t)

        train, val = self._split(np.asarray(y) if self.task == "classification" else y, rng)
        Xt = torch.as_tensor((X - self.mean_) / self.scale_).to(device)
        target = target.to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            layers: list[nn.Module] = []
            width = X.shape[1]
            for h in self.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, n_out))
            net = nn.Sequential(*layers).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.random_state)
        train_t = torch.as_tensor(train, device=device)
        X_val, t_val = Xt[val], target[val]
        batch = int(min(self.batch_size, max(32, len(train) // 8)))

        best, best_state, since = float("inf"), None, 0
        self.best_epoch_ = 0
        for epoch in range(1, self.max_epochs + 1):
            net.train()
            order = train_t[torch.randperm(len(train), generator=gen).to(device)]
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                loss = loss_fn(net(Xt[idx]), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(X_val), t_val))
            if val_loss < best - 1e-6:
                best, since, self.best_epoch_ = val_loss, 0, epoch
                best_state = copy.deepcopy(net.state_dict())
            else:
                since += 1
                if since >= self.patience:
                    break
        self.n_epochs_ = epoch
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.device_ = device
        return self

    def _forward(self, X) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        X = (X - self.mean_) / self.scale_
        with torch.no_grad():
            return self.net_(torch.as_tensor(X, device=self.device_)).float().cpu()

    @available_if(_is_classifier)
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_`` (classification only).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return torch.softmax(self._forward(X), dim=1).numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """Class labels (classification) or targets (regression).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        out = self._forward(X)
        if _is_classifier(self):
            return self.classes_[out.argmax(dim=1).numpy()]
        return out.squeeze(1).numpy().astype(np.float64) * self.y_scale_ + self.y_mean_

    def score(self, X, y) -> float:
        """Accuracy (classification) or R² (regression) on ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        score : float
        """
        metric = accuracy_score if _is_classifier(self) else r2_score
        return float(metric(y, self.predict(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        if _is_classifier(self):
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
        else:
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
        tags.target_tags.required = True
        return tags
