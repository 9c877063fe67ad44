import json
import math
import subprocess
import sys

import pytest
import torch

from mnist_fusion.data import BatchLoader, MNISTSum
from mnist_fusion.losses import FusionLoss
from mnist_fusion.models import ConvEncoderConfig, FusionModel, FusionModelConfig
from mnist_fusion.training import evaluate

CONFIG = FusionModelConfig(encoder=ConvEncoderConfig(channels=(8, 16)))

# One subprocess serves the checks below, because starting Python with torch is the
# slow part. Every module but mnist_fusion.lightning is imported first, while `import
# lightning` still works; then Lightning is blocked and mnist_fusion.lightning imported.
PROBE = """
import importlib, json, pkgutil, sys
import mnist_fusion
core = ["mnist_fusion"]
for info in pkgutil.walk_packages(mnist_fusion.__path__, "mnist_fusion."):
    if info.name != "mnist_fusion.lightning":
        importlib.import_module(info.name)
        core.append(info.name)
report = {"core": core}
report["loaded"] = sorted({"lightning", "pytorch_lightning"} & set(sys.modules))
sys.modules["lightning"] = None  # makes `import lightning` fail as if absent
import mnist_fusion.lightning
for name in ("FusionLightningModule", "MNISTSumDataModule", "no_such_name"):
    try:
        getattr(mnist_fusion.lightning, name)
    except (ImportError, AttributeError) as error:
        report[name] = f"{type(error).__name__}: {error}"
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    """What a fresh process reports about Lightning imports; see PROBE."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_core_does_not_import_lightning(probe):
    assert probe["loaded"] == []


@pytest.mark.parametrize(
    "name", ["mnist_fusion.losses", "mnist_fusion.metrics.functional", "mnist_fusion.training"]
)
def test_probe_imports_core_module(probe, name):
    assert name in probe["core"]


@pytest.mark.parametrize("name", ["FusionLightningModule", "MNISTSumDataModule"])
def test_missing_lightning_names_extra(probe, name):
    assert probe[name] == (
        f"ImportError: mnist_fusion.lightning.{name} needs Lightning, which is not installed; "
        "install it with pip install 'mnist-fusion[lightning]'."
    )


def test_missing_lightning_other_name(probe):
    assert probe["no_such_name"] == (
        "AttributeError: module 'mnist_fusion.lightning' has no attribute 'no_such_name'"
    )


@pytest.fixture(scope="module")
def lightning():
    return pytest.importorskip("lightning")


@pytest.fixture
def trainer_factory(lightning, tmp_path):
    def make(**kwargs):
        options = {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": tmp_path,
            "deterministic": True,
        }
        return lightning.Trainer(**{**options, **kwargs})

    return make


def test_trainer_fit_logs_evaluate_values(tiny_mnist_root, trainer_factory):
    from mnist_fusion.lightning import FusionLightningModule, MNISTSumDataModule

    torch.manual_seed(0)
    module = FusionLightningModule(
        FusionModel(CONFIG), loss_fn=FusionLoss(sum_weight=0.05), lr=0.01, one_cycle=True
    )
    data = MNISTSumDataModule(tiny_mnist_root, seed=0, batch_size=64, eval_batch_size=100)
    trainer = trainer_factory(max_epochs=1)

    trainer.fit(module, datamodule=data)

    test_data = MNISTSum(tiny_mnist_root, train=False, seed=0).as_tensors()
    expected = evaluate(
        module.model, BatchLoader(test_data, batch_size=100), device="cpu", progress=False
    )
    logged = {name: value.item() for name, value in trainer.callback_metrics.items()}
    for name in ("digit_accuracy", "sum_accuracy", "sum_r2", "sum_mae", "consistency"):
        assert logged[f"val_{name}"] == pytest.approx(expected[name], rel=1e-6), name
    assert logged["val_digit_accuracy"] > 0.5
    assert math.isfinite(logged["train_loss"])


def test_trainer_test_logs_test_values(tiny_mnist_root, trainer_factory):
    from mnist_fusion.lightning import FusionLightningModule, MNISTSumDataModule

    torch.manual_seed(0)
    module = FusionLightningModule(FusionModel(CONFIG))
    data = MNISTSumDataModule(tiny_mnist_root, seed=0, eval_batch_size=128)

    (results,) = trainer_factory().test(module, datamodule=data)

    test_data = MNISTSum(tiny_mnist_root, train=False, seed=0).as_tensors()
    expected = evaluate(
        module.model, BatchLoader(test_data, batch_size=128), device="cpu", progress=False
    )
    assert results["test_digit_accuracy"] == pytest.approx(expected["digit_accuracy"])
    assert results["test_digit_accuracy_3"] == pytest.approx(expected["digit_accuracy_3"])


def test_data_module_paths_agree(tiny_mnist_root, lightning):
    from mnist_fusion.lightning import MNISTSumDataModule

    tensors = MNISTSumDataModule(tiny_mnist_root, seed=3, eval_batch_size=50)
    per_item = MNISTSumDataModule(tiny_mnist_root, seed=3, eval_batch_size=50, per_item=True)
    tensors.setup("test")
    per_item.setup("test")

    first = next(iter(tensors.test_dataloader()))
    second = next(iter(per_item.test_dataloader()))

    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_data_module_train_covers_split(tiny_mnist_root, lightning):
    from mnist_fusion.lightning import MNISTSumDataModule

    data = MNISTSumDataModule(tiny_mnist_root, seed=0, batch_size=500)
    data.setup("fit")

    indices = torch.cat([batch["index"] for batch in data.train_dataloader()])

    assert torch.equal(indices.sort().values, torch.arange(1200))
    assert not torch.equal(indices, torch.arange(1200))


def test_data_module_needs_setup(tiny_mnist_root, lightning):
    from mnist_fusion.lightning import MNISTSumDataModule

    data = MNISTSumDataModule(tiny_mnist_root)

    with pytest.raises(ValueError, match=r"The train split is not open; call setup\(\) first"):
        data.train_dataloader()


def test_optimizer_trains_loss_parameters(lightning):
    from mnist_fusion.lightning import FusionLightningModule

    loss_fn = FusionLoss(uncertainty_weighting=True)
    module = FusionLightningModule(FusionModel(CONFIG), loss_fn=loss_fn)

    optimizer = module.configure_optimizers()

    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(loss_fn.log_variances) in trained


def test_nan_loss_names_epoch_and_batch(lightning):
    from mnist_fusion.lightning import FusionLightningModule

    module = FusionLightningModule(FusionModel(CONFIG))
    batch = {
        "image": torch.full((2, 1, 28, 28), math.nan),
        "side": torch.tensor([1, 2]),
        "digit": torch.tensor([3, 4]),
        "sum": torch.tensor([4, 6]),
    }

    with pytest.raises(FloatingPointError, match="Loss is nan at epoch 1, batch 3; training"):
        module.training_step(batch, 2)


def test_lightning_checkpoint_restores_weights(tiny_mnist_root, trainer_factory, tmp_path):
    from mnist_fusion.lightning import FusionLightningModule, MNISTSumDataModule

    torch.manual_seed(0)
    module = FusionLightningModule(FusionModel(CONFIG))
    trainer = trainer_factory(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=MNISTSumDataModule(tiny_mnist_root, batch_size=32))
    trainer.save_checkpoint(tmp_path / "module.ckpt")

    restored = FusionLightningModule.load_from_checkpoint(
        tmp_path / "module.ckpt", model=FusionModel(CONFIG)
    )

    for name, tensor in module.model.state_dict().items():
        assert torch.equal(tensor, restored.model.state_dict()[name]), name
