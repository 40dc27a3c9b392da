"""The training loop: device choice, bf16 on CUDA, a device-resident dataset, checkpoints, resume."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .._utils.atomic import atomic_write_path
from .._utils.device import autocast
from .adversary import AttributeAdversary, ConditionSlice
from .independence import independence_penalty
from .inputs import network_input
from .network import BAFONetwork, vae_loss_terms


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings.

    Parameters
    ----------
    epochs : int
    batch_size : int
    learning_rate : float
        Adam's step size.
    kl_weight : float
        Weight of the KL term (1 is the plain ELBO; the paper suggests more).
    variance_weight : float
        Extra multiplier on the variance part of the KL term (the paper's
        "heavier penalty on the standard deviation").
    independence_weight : float
        Weight of the HSIC penalty between posterior means and each sensitive
        attribute (0 disables it).
    validation_fraction : float
        Share of the training rows held out for the per-epoch validation loss.
    seed : int
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    kl_weight: float = 1.0
    variance_weight: float = 1.0
    independence_weight: float = 0.0
    adversary_weight: float = 0.0
    adversary_steps: int = 2
    validation_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 2 or not self.learning_rate > 0:
            raise ValueError(
                f"need epochs >= 0, batch_size >= 2 and learning_rate > 0; got {self.epochs}, "
                f"{self.batch_size}, {self.learning_rate}"
            )
        if min(self.kl_weight, self.variance_weight, self.independence_weight, self.adversary_weight) < 0:
            raise ValueError("kl_weight, variance_weight, independence_weight and adversary_weight must be >= 0")
        if self.adversary_steps < 1:
            raise ValueError(f"adversary_steps must be >= 1, got {self.adversary_steps}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")


class TrainingHook(Protocol):
    """A concealment step's part in the encoder's training (``step.training_hook(latent_dim, condition_slices)``).

    The place for erasure learned inside training: between encoder and decoder
    the hook may replace the sampled latent the decoder sees (e.g. by an eraser
    refreshed from running class-conditional statistics,
    :class:`~bafo_pipeline._nn.in_loop.InLoopErasure`), and it adds a term to
    the loss (e.g. a distribution-matching penalty on the posterior means).
    An optional ``begin(conditions, input_size)`` is called once before the
    first batch of :meth:`Trainer.fit` with the training rows' conditions and
    the number of values in one input row. Its state is not part of training
    checkpoints.
    """

    def latent(self, z: torch.Tensor, conditions: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """What the decoder receives instead of the sampled latent ``z`` (training and validation);
        ``mean`` is the posterior mean ``z`` was sampled around (``z`` itself in validation)."""
        ...

    def loss(self, mean: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """A scalar added to the batch loss; ``mean`` is the posterior mean (gradients flow to the encoder)."""
        ...


def training_autocast(device: torch.device):
    """The training precision: bf16 autocast on CUDA, float32 elsewhere."""
    return autocast(device, enabled=device.type == "cuda")


class Trainer:
    """Fits a :class:`BAFONetwork` on tensors that stay on the training device.

    Parameters
    ----------
    network : BAFONetwork
    config : TrainingConfig
    device : torch.device
    condition_slices : list of (int, int, str)
        Column range and kind of each attribute in the condition vector (for
        the independence penalty and the adversaries).
    hooks : sequence of TrainingHook, default=()
        Concealment steps taking part in training (see :class:`TrainingHook`).
    """

    def __init__(
        self,
        network: BAFONetwork,
        config: TrainingConfig,
        device: torch.device,
        condition_slices: list[ConditionSlice],
        hooks: Sequence[TrainingHook] = (),
    ):
        self.network = network.to(device)
        if network.config.kind == "conv":
            self.network = self.network.to(memory_format=torch.channels_last)
        self.config = config
        self.device = device
        self.condition_slices = condition_slices
        self.hooks = tuple(hooks)
        # Fused Adam is one kernel per step on CUDA; the CPU keeps the default (bit-reproducible) path.
        self.optimizer = torch.optim.Adam(
            self.network.parameters(), lr=config.learning_rate, fused=True if device.type == "cuda" else None
        )
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.adversary: AttributeAdversary | None = None
        if config.adversary_weight > 0 and condition_slices:
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the global RNG
                torch.manual_seed(config.seed + 1)
                self.adversary = AttributeAdversary(network.config.latent_dim, condition_slices).to(device)
            self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=config.learning_rate)
        self.history: list[dict] = []
        self.start_epoch = 0
        self._n_samples: int | None = None
        # The weights of the epoch with the lowest validation loss so far, kept at the end of fit.
        self.best: dict | None = None

    def _autocast(self):
        return training_autocast(self.device)

    def _loss(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch loss and its parts, as on-device tensors (no host sync)."""
        cfg = self.config
        with self._autocast():
            reconstruction, mean, logvar = self.network(
                x, c, generator=self.generator, latent_hook=self._hooked_latent if self.hooks else None
            )
        terms = vae_loss_terms(x, reconstruction, mean, logvar)
        per_sample = terms["reconstruction"] + cfg.kl_weight * (
            terms["kl_mean"] + cfg.variance_weight * terms["kl_variance"]
        )
        loss = per_sample.mean()
        parts = {name: value.detach().mean() for name, value in terms.items()}
        if cfg.independence_weight > 0 and self.condition_slices:
            penalty = independence_penalty(mean, c, [(start, stop) for start, stop, _ in self.condition_slices])
            # Scaled by the input size so the weight means the same for 56x56 images and tabular data.
            loss = loss + cfg.independence_weight * x[0].numel() * penalty
            parts["independence"] = penalty.detach()
        if self.adversary is not None:
            self._train_adversary(mean.detach(), c)
            confusion = self.adversary.confusion_loss(mean, c)
            loss = loss + cfg.adversary_weight * x[0].numel() * confusion
            parts["adversary_confusion"] = confusion.detach()
        for i, hook in enumerate(self.hooks):
            term = hook.loss(mean, c)
            loss = loss + term
            parts[f"hook_{i}"] = term.detach()
        parts["loss"] = loss.detach()
        return loss, parts

    def _hooked_latent(self, z: torch.Tensor, c: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        for hook in self.hooks:
            z = hook.latent(z, c, mean)
        return z

    def _train_adversary(self, latents: torch.Tensor, conditions: torch.Tensor) -> None:
        """A few steps of the adversaries on the current (detached) latents."""
        for _ in range(self.config.adversary_steps):
            loss = self.adversary.prediction_loss(latents, conditions)
            self.adversary_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.adversary_optimizer.step()

    def fit(
        self,
        inputs: torch.Tensor,
        conditions: torch.Tensor,
        *,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Train until ``config.epochs`` epochs are done.

        Parameters
        ----------
        inputs : Tensor
            uint8 images ``(n, C, H, W)`` or float features ``(n, d)``; moved to
            the training device once (a 20k-image 56x56 set is ~190 MB).
        conditions : Tensor of shape (n, width)
            Encoded sensitive attributes.
        checkpoint : path, optional
            Written atomically after every epoch: weights, optimizer and
            random-generator state, history.
        resume : bool
            Continue from ``checkpoint`` when it exists. On the CPU the result
            is identical to an uninterrupted run.
        on_epoch_end : callable, optional
            Called with each epoch's record (for progress bars).

        Returns
        -------
        list of dict
            One record per epoch: mean training loss and its parts, validation
            loss (when rows were held out), images per second. With held-out
            rows the network ends with the weights of the epoch of lowest
            validation loss, whose record says ``"kept": True``.

        Raises
        ------
        ValueError
            When resuming from a checkpoint written for another network, other
            training settings or another number of rows.
        """
        cfg = self.config
        inputs = inputs.to(self.device)
        conditions = conditions.to(self.device, torch.float32)
        if len(inputs) != len(conditions):
            raise ValueError(f"inputs have {len(inputs)} rows but conditions have {len(conditions)}")
        self._n_samples = len(inputs)
        train_idx, valid_idx = self._split(len(inputs))
        for hook in self.hooks:
            begin = getattr(hook, "begin", None)
            if callable(begin):
                begin(conditions[train_idx], int(inputs[0].numel()))
        checkpoint = Path(checkpoint) if checkpoint is not None else None
        if resume and checkpoint is not None and checkpoint.exists():
            self._load_checkpoint(checkpoint)

        for epoch in range(self.start_epoch, cfg.epochs):
            started = time.perf_counter()
            self.network.train()
            permutation = train_idx[torch.randperm(len(train_idx), generator=self.generator, device=self.device)]
            totals: dict[str, torch.Tensor] = {}
            n_batches = 0
            for start in range(0, len(permutation), cfg.batch_size):
                index = permutation[start : start + cfg.batch_size]
                if len(index) < 2:  # a one-row batch has no spread for the independence penalty
                    continue
                loss, parts = self._loss(network_input(inputs[index], self.device), conditions[index])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                for key, value in parts.items():
                    totals[key] = totals[key] + value if key in totals else value
                n_batches += 1
            # One host transfer per epoch (it also waits for the device to finish, so the timing is honest).
            record = {"epoch": epoch + 1, **{key: float(value) / n_batches for key, value in totals.items()}}
            record["images_per_second"] = len(train_idx) / max(time.perf_counter() - started, 1e-9)
            if len(valid_idx):
                record["validation_loss"] = self.evaluate(inputs[valid_idx], conditions[valid_idx])
                self._remember_if_best(record)
            self.history.append(record)
            self.start_epoch = epoch + 1
            if self.adversary is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed + 2 + epoch)
                    self.adversary.reset_next()
            if checkpoint is not None:
                self._save_checkpoint(checkpoint)
            if on_epoch_end is not None:
                on_epoch_end(record)
        self._keep_best()
        self.network.eval()
        return self.history

    def _remember_if_best(self, record: dict) -> None:
        if self.best is None or record["validation_loss"] < self.best["loss"]:
            weights = {name: value.detach().clone() for name, value in self.network.state_dict().items()}
            self.best = {"epoch": record["epoch"], "loss": record["validation_loss"], "network": weights}

    def _keep_best(self) -> None:
        """Go back to the weights of the epoch with the lowest validation loss, if a later one was worse.

        An epoch can diverge (at batch 32 and learning rate 2e-3 one of four UTKFace seeds did in its
        4th epoch: validation loss 106 to 178); what it leaves is never the model to hand over.
        The history keeps every epoch; the kept one is marked ``"kept": True``.
        """
        if self.best is None or not self.history:
            return
        if self.best["epoch"] != self.history[-1]["epoch"]:
            self.network.load_state_dict(self.best["network"])
        for record in self.history:
            record.pop("kept", None)
            if record["epoch"] == self.best["epoch"]:
                record["kept"] = True

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and validation row indices, fixed by the seed (so a resumed run holds out the same rows)."""
        cfg = self.config
        order = np.random.default_rng(cfg.seed).permutation(n)
        n_valid = int(round(cfg.validation_fraction * n)) if n >= 20 else 0
        if n - n_valid < 2:
            raise ValueError(f"only {n - n_valid} training rows left after holding out {n_valid} for validation")
        valid_idx = torch.as_tensor(order[:n_valid], device=self.device)
        train_idx = torch.as_tensor(order[n_valid:], device=self.device)
        return train_idx, valid_idx

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, conditions: torch.Tensor, batch_size: int = 1024) -> float:
        """Mean negative ELBO (squared error + KL, unweighted) with posterior-mean decoding."""
        self.network.eval()
        total = torch.zeros((), device=self.device)
        for start in range(0, len(inputs), batch_size):
            x = network_input(inputs[start : start + batch_size], self.device)
            c = conditions[start : start + batch_size].to(self.device, torch.float32)
            with self._autocast():
                mean, logvar = self.network.encode(x)
                reconstruction = self.network.decode(self._hooked_latent(mean, c, mean), c)
            terms = vae_loss_terms(x, reconstruction, mean, logvar)
            total += (terms["reconstruction"] + terms["kl_mean"] + terms["kl_variance"]).sum()
        return float(total) / max(len(inputs), 1)

    def _save_checkpoint(self, path: Path) -> None:
        state = {
            "network": self.network.state_dict(),
            "network_config": self.network.config.to_dict(),
            "n_samples": self._n_samples,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.start_epoch,
            "history": self.history,
            "config": asdict(self.config),
        }
        if self.best is not None:
            state["best"] = self.best
        if self.adversary is not None:
            state["adversary"] = self.adversary.state_dict()
            state["adversary_optimizer"] = self.adversary_optimizer.state_dict()
            state["adversary_next_reset"] = self.adversary.next_reset
        with atomic_write_path(path, overwrite=True) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a truncated or foreign file: say which file
            raise ValueError(f"checkpoint {path} cannot be read: {error}") from error
        if not isinstance(state, dict) or "network" not in state:
            raise ValueError(f"{path} is not a BAFO training checkpoint")
        network = state.get("network_config")
        if network is not None and network != self.network.config.to_dict():
            raise ValueError(
                f"checkpoint {path} was written for a different network: {network} vs {self.network.config.to_dict()}"
            )
        if state.get("n_samples", self._n_samples) != self._n_samples:
            raise ValueError(
                f"checkpoint {path} was written while training on {state['n_samples']} rows, "
                f"not the {self._n_samples} given now"
            )
        saved = {k: v for k, v in state["config"].items() if k != "epochs"}
        current = {k: v for k, v in asdict(self.config).items() if k != "epochs"}
        if saved != current:
            raise ValueError(f"checkpoint {path} was written with different training settings: {saved} vs {current}")
        if int(state["epoch"]) > self.config.epochs:
            raise ValueError(
                f"checkpoint {path} already holds {state['epoch']} epochs, more than the {self.config.epochs} asked for"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
            self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
            self.adversary.next_reset = int(state["adversary_next_reset"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state.get("best")


def fit_decoder(
    decoder: torch.nn.Module,
    latents: torch.Tensor,
    conditions: torch.Tensor,
    inputs: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    seed: int,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> torch.nn.Module:
    """Fine-tune ``decoder`` to rebuild ``inputs`` from ``(latents, conditions)``; returns it on the CPU.

    The loss is the VAE's reconstruction term (squared error summed per sample).
    Used after concealment: the concealed latents are what users decode, and a
    decoder trained on the encoder's raw latents never saw them. bf16 autocast
    and fused Adam on CUDA, as in :class:`Trainer`.

    Parameters
    ----------
    decoder : torch.nn.Module
        Called as ``decoder(latents, conditions)``; trained in place.
    latents, conditions : Tensor of shape (n, latent_dim) and (n, condition_dim)
    inputs : Tensor
        uint8 NCHW images or float features, row-aligned with ``latents``.
    epochs, batch_size : int
    learning_rate : float
    device : torch.device
    seed : int
        Seeds the batch order.
    on_epoch_end : callable, optional
        Called with ``{"epoch", "loss", "images_per_second"}`` after each epoch.
    """
    decoder = decoder.to(device).train()
    if inputs.dtype == torch.uint8:
        decoder = decoder.to(memory_format=torch.channels_last)
    latents, conditions, inputs = latents.to(device), conditions.to(device), inputs.to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=learning_rate, fused=True if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        order = torch.randperm(len(latents), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x = network_input(inputs[index], device)
            with training_autocast(device):
                reconstruction = decoder(latents[index], conditions[index])
            loss = (reconstruction.float() - x.float()).pow(2).flatten(1).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        if on_epoch_end is not None:
            seconds = time.perf_counter() - started
            on_epoch_end({"epoch": epoch, "loss": float(total) / len(order), "images_per_second": len(order) / seconds})
    return decoder.cpu().to(memory_format=torch.contiguous_format).eval()

