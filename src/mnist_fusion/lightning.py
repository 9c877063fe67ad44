"""Lightning integration: a LightningModule and a LightningDataModule for MNIST-sum.

Needs the optional extra: ``pip install mnist-fusion[lightning]``. The core package
never imports this module, so it runs without Lightning. Without Lightning this module
still imports, and asking it for a class raises an ImportError that names the extra.

The logic lives in two plain mixins. The public classes, which combine each mixin with
its Lightning base, exist only where Lightning is installed, so that importing this
module (as pytest's doctest collection does) works without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mnist_fusion.data import MNISTSum, prepare_mnist
from mnist_fusion.distributed import ShardSampler
from mnist_fusion.losses import FusionLoss, LossOutput
from mnist_fusion.metrics import FusionMetrics
from mnist_fusion.models.fusion import FusionModel, FusionOutput
from mnist_fusion.training import _forward_batch

__all__ = ["FusionLightningModule", "MNISTSumDataModule"]

_INSTALL_HINT = "pip install 'mnist-fusion[lightning]'"

try:
    import lightning
except ModuleNotFoundError as error:
    if error.name != "lightning":
        raise
    lightning = None


class _FusionTask:
    """Training, validation and test steps of a fusion model, for a LightningModule."""

    def __init__(
        self,
        model: FusionModel | None = None,
        *,
        loss_fn: FusionLoss | None = None,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        one_cycle: bool = False,
    ) -> None:
        super().__init__()
        self.model = model if model is not None else FusionModel()
        self.loss_fn = loss_fn if loss_fn is not None else FusionLoss(sum_loss="auto")
        self.lr = lr
        self.weight_decay = weight_decay
        self.one_cycle = one_cycle
        config = self.model.config
        options = {"max_sum": config.max_sum, "num_classes": config.encoder.num_classes}
        self.val_metrics = FusionMetrics(**options)
        self.test_metrics = FusionMetrics(**options)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> FusionOutput:
        """Run the model on a batch dict."""
        return _forward_batch(self.model, batch)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Return the total loss of one batch and log its terms as epoch averages.

        Raises:
            FloatingPointError: If the loss is NaN or infinite.
        """
        loss: LossOutput = self.loss_fn(self(batch), batch)
        if not torch.isfinite(loss.total):
            raise FloatingPointError(
                f"Loss is {loss.total.item()} at epoch {self.current_epoch + 1}, batch "
                f"{batch_idx + 1}; training stopped. Lower the learning rate or set "
                "gradient_clip_val on the Trainer."
            )
        terms = {"train_loss": loss.total, "train_digit_loss": loss.digit}
        terms["train_sum_loss"] = loss.sum
        # batch_size weights the epoch average by batch size, as fit does.
        self.log_dict(
            terms, on_step=False, on_epoch=True, batch_size=len(batch["sum"]), sync_dist=True
        )
        return loss.total

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Add one batch to the validation metrics."""
        self.val_metrics.update(self(batch), batch)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Add one batch to the test metrics."""
        self.test_metrics.update(self(batch), batch)

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics with a ``val_`` prefix and reset them."""
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        """Log the test metrics with a ``test_`` prefix and reset them."""
        self._log_metrics("test", self.test_metrics)

    def configure_optimizers(self) -> Any:
        """Return AdamW over the model's and the loss's parameters, optionally one-cycle."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.one_cycle:
            return optimizer
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _log_metrics(self, prefix: str, metrics: FusionMetrics) -> None:
        # compute() already sums the states over all processes, so Lightning need not
        # reduce the values again.
        values = metrics.compute()
        self.log_dict({f"{prefix}_{name}": value for name, value in values.items()})
        metrics.reset()


class _MNISTSumData:
    """Train and test loaders of MNIST-sum, for a LightningDataModule."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        per_item: bool = False,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.root = root
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.per_item = per_item
        self.num_workers = num_workers
        self.download = download
        self.train_data: Dataset | None = None
        self.test_data: Dataset | None = None

    def prepare_data(self) -> None:
        """Put the MNIST files in place when ``download`` is set (runs on one process)."""
        if self.download:
            prepare_mnist(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Open the training split for fitting and the test split for every stage."""
        if stage in (None, "fit") and self.train_data is None:
            self.train_data = self._split(train=True)
        if self.test_data is None:
            self.test_data = self._split(train=False)

    def train_dataloader(self) -> DataLoader:
        """Return shuffled training batches, in an order fixed by ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._opened(self.train_data, "train"),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader:
        """Return the test split in order, because MNIST has no validation split."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        """Return the test split in order, every sample once on a single process."""
        return self._eval_loader()

    def _eval_loader(self) -> DataLoader:
        dataset = self._opened(self.test_data, "test")
        # Lightning's own DistributedSampler pads the last shard, which would count some
        # test items twice; ShardSampler never pads, and Lightning keeps it as given.
        sampler = ShardSampler(dataset) if torch.distributed.is_initialized() else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            sampler=sampler,
        )

    def _split(self, *, train: bool) -> Dataset:
        dataset = MNISTSum(self.root, train=train, seed=self.seed)
        return dataset if self.per_item else dataset.as_tensors()

    def _opened(self, dataset: Dataset | None, split: str) -> Dataset:
        if dataset is None:
            raise ValueError(
                f"The {split} split is not open; call setup() first, as the Trainer does."
            )
        return dataset


if lightning is not None:

    class FusionLightningModule(_FusionTask, lightning.LightningModule):
        """A LightningModule that trains a FusionModel with FusionLoss and FusionMetrics.

        ``training_step`` logs ``train_loss``, ``train_digit_loss`` and
        ``train_sum_loss`` as epoch averages weighted by batch size. Validation and test
        log every value of ``FusionMetrics.compute()`` with a ``val_`` or ``test_``
        prefix through ``log_dict``. The metric states sum across processes, so under
        ``Trainer(strategy="ddp")`` the logged values cover all processes' samples.

        Args:
            model: The model; defaults to ``FusionModel()``.
            loss_fn: The loss; defaults to ``FusionLoss(sum_loss="auto")``. Its
                parameters, if any, are trained with the model's.
            lr: Learning rate of AdamW (the peak rate with ``one_cycle``).
            weight_decay: Weight decay of AdamW.
            one_cycle: Schedule the learning rate with ``OneCycleLR``, stepped per batch.

        Examples:
            >>> module = FusionLightningModule(FusionModel(), lr=0.01)
            >>> batch = {"image": torch.zeros(2, 1, 28, 28), "side": torch.tensor([1, 2])}
            >>> tuple(module(batch).digit_logits.shape)
            (2, 10)
        """

    class MNISTSumDataModule(_MNISTSumData, lightning.LightningDataModule):
        """A LightningDataModule of MNIST-sum: shuffled training batches, the test split.

        By default the splits are tensor-resident (``MNISTSum(...).as_tensors()``);
        ``per_item=True`` uses the per-item ``MNISTSum`` datasets instead, which give
        the same samples. Both go through a torch ``DataLoader``, so that Lightning can
        shard them across processes. The validation loader is the test split, as in
        ``mnist-fusion train``.

        Args:
            root: Folder that contains ``MNIST/raw``.
            seed: Seed of the side inputs and of the shuffle order.
            batch_size: Training batch size.
            eval_batch_size: Batch size of the validation and test loaders.
            per_item: Use the per-item datasets instead of the tensor-resident ones.
            num_workers: DataLoader worker processes.
            download: Run :func:`~mnist_fusion.data.prepare_mnist` in ``prepare_data``.

        Examples:
            >>> data = MNISTSumDataModule("data", seed=0, batch_size=64)
            >>> data.batch_size, data.per_item
            (64, False)
        """

else:

    def __getattr__(name: str) -> Any:
        if name in __all__:
            raise ImportError(
                f"mnist_fusion.lightning.{name} needs Lightning, which is not installed; "
                f"install it with {_INSTALL_HINT}."
            )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
