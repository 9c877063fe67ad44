import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_fusion import checkpoint
from mnist_fusion.checkpoint import CheckpointError, load, load_metadata, save
from mnist_fusion.models import ConvEncoderConfig, FusionHeadConfig, FusionModel, FusionModelConfig

SMALL_ENCODER = ConvEncoderConfig(channels=(4, 8))
CONFIG = FusionModelConfig(
    encoder=ConvEncoderConfig(channels=(4, 8), dropout=0.1),
    head=FusionHeadConfig(fuse="logits", hidden=16),
)


def trained_model() -> FusionModel:
    """A model whose weights and BatchNorm statistics differ from a fresh one's."""
    torch.manual_seed(0)
    model = FusionModel(CONFIG)
    model.train()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model(torch.randn(16, 1, 28, 28) * 2 + 1, torch.randint(0, 10, (16,)))
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 28, 28, generator=generator), torch.randint(
        0, 10, (6,), generator=generator
    )


def raw_payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def write_payload(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    return path


def path_pattern(path: Path) -> str:
    return re.escape(repr(str(path)))


def test_round_trip_outputs_identical(tmp_path):
    model = trained_model().eval()
    path = save(model, tmp_path / "model.pt")

    loaded = load(path)

    with torch.no_grad():
        before = model(*inputs())
        after = loaded(*inputs())
    assert torch.equal(before.digit_logits, after.digit_logits)
    assert torch.equal(before.sum, after.sum)


def test_round_trip_config_and_state(tmp_path):
    model = trained_model()
    save(model, tmp_path / "model.pt")

    loaded = load(tmp_path / "model.pt")

    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name


def test_load_returns_eval_mode(tmp_path):
    save(trained_model().train(), tmp_path / "model.pt")

    assert load(tmp_path / "model.pt").training is False


def test_save_returns_path(tmp_path):
    assert save(trained_model(), str(tmp_path / "m.pt")) == tmp_path / "m.pt"


def test_metadata_round_trip(tmp_path):
    metadata = {
        "seed": 3,
        "lr": 0.01,
        "tag": "run",
        "ok": True,
        "none": None,
        "epochs": [1, 2],
        "nested": {"a": (1, 2.5)},
    }

    save(trained_model(), tmp_path / "model.pt", metadata=metadata)

    assert load_metadata(tmp_path / "model.pt") == {**metadata, "nested": {"a": (1, 2.5)}}


def test_metadata_defaults_empty(tmp_path):
    save(trained_model(), tmp_path / "model.pt")

    assert load_metadata(tmp_path / "model.pt") == {}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"root": Path("/data")}, r"`metadata\['root'\]`.*pathlib\..*Path"),
        ({"lr": np.float64(0.1)}, r"`metadata\['lr'\]`.*numpy\.float64"),
        ({"rows": [1, {2, 3}]}, r"`metadata\['rows'\]\[1\]`.*builtins\.set"),
        ({"weights": {1: "a"}}, r"str keys in `metadata\['weights'\]`, but got key 1"),
    ],
)
def test_unreadable_metadata_rejected(tmp_path, metadata, message):
    with pytest.raises(TypeError, match=message):
        save(trained_model(), tmp_path / "model.pt", metadata=metadata)

    assert not (tmp_path / "model.pt").exists()


def test_save_rejects_other_module(tmp_path):
    with pytest.raises(TypeError, match="Expected a FusionModel, but got Linear"):
        save(torch.nn.Linear(2, 2), tmp_path / "model.pt")


def test_save_missing_folder(tmp_path):
    missing = tmp_path / "nope" / "model.pt"

    with pytest.raises(FileNotFoundError, match=re.escape(str(missing.parent))):
        save(trained_model(), missing)


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.pt"

    with pytest.raises(FileNotFoundError, match=rf"Checkpoint {path_pattern(path)} not found"):
        load(path)


def test_load_metadata_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_metadata(tmp_path / "absent.pt")


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_not_checkpoint(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(64 + 97 * seed))

    with pytest.raises(
        CheckpointError, match=rf"{path_pattern(path)} is not a readable mnist_fusion checkpoint"
    ):
        load(path)


@pytest.mark.parametrize(
    "content",
    [b'{"format": "mnist_fusion.model"}\n', b"", b"hello\n", bytes(100)],
    ids=["json", "empty", "text", "zeros"],
)
def test_other_file_not_checkpoint(tmp_path, content):
    path = tmp_path / "other.pt"
    path.write_bytes(content)

    with pytest.raises(CheckpointError, match=path_pattern(path)):
        load(path)


def test_json_config_file_not_checkpoint(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FusionModelConfig().to_dict()))

    with pytest.raises(CheckpointError, match=rf"{path_pattern(path)} is not a readable"):
        load(path)


@pytest.mark.parametrize(
    "payload", [{"weights": 1}, [1, 2, 3], torch.zeros(3)], ids=["dict", "list", "tensor"]
)
def test_other_torch_file_not_checkpoint(tmp_path, payload):
    path = write_payload(tmp_path / "other.pt", payload)

    with pytest.raises(
        CheckpointError, match=rf"{path_pattern(path)} is not an mnist_fusion model checkpoint"
    ):
        load(path)


def test_plain_state_dict_not_checkpoint(tmp_path):
    path = write_payload(tmp_path / "state.pt", trained_model().state_dict())

    with pytest.raises(CheckpointError, match="expected format 'mnist_fusion.model'"):
        load(path)


@pytest.mark.parametrize("fraction", [0.0001, 0.1, 0.5, 0.9, 0.9999])
def test_truncated_checkpoint(tmp_path, fraction):
    full = save(trained_model(), tmp_path / "full.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(full[: max(1, int(len(full) * fraction))])

    with pytest.raises(
        CheckpointError, match=rf"{path_pattern(path)} is not a readable.*truncated"
    ):
        load(path)


def test_future_format_version(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    path = write_payload(tmp_path / "v2.pt", {**payload, "format_version": 2})

    with pytest.raises(
        CheckpointError, match=rf"{path_pattern(path)} has format version 2; .* reads version 1"
    ):
        load(path)


def test_missing_weight_key(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    del payload["state_dict"]["head.linear.bias"]
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError,
        match=rf"{path_pattern(path)} do not fit .*"
        r"missing keys \['head\.linear\.bias'\], unexpected keys \[\]",
    ):
        load(path)


def test_unexpected_weight_key(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["state_dict"]["head.extra.weight"] = torch.zeros(2)
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError, match=r"missing keys \[\], unexpected keys \['head.extra.weight'\]"
    ):
        load(path)


def test_config_channels_mismatch(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["config"]["encoder"]["channels"] = [4, 16]
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError, match=rf"(?s){path_pattern(path)} do not fit: .*size mismatch for encoder"
    ):
        load(path)


def test_weight_shape_mismatch(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["state_dict"]["head.linear.weight"] = torch.zeros(1, 3)
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError, match=r"(?s)do not fit: .*size mismatch for head\.linear\.weight"
    ):
        load(path)


def test_invalid_config_in_file(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["config"]["encoder"]["norm"] = "bacth"
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError, match=rf"{path_pattern(path)} contains an invalid configuration: .*'bacth'"
    ):
        load(path)


def test_missing_config_in_file(tmp_path):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    del payload["config"]
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(CheckpointError, match=r"invalid configuration: 'config'"):
        load(path)


@pytest.mark.parametrize("state_dict", [None, [1, 2]], ids=["missing", "list"])
def test_missing_weights_in_file(tmp_path, state_dict):
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["state_dict"] = state_dict
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(
        CheckpointError,
        match=rf"{path_pattern(path)} contains no weights: expected a `state_dict` mapping",
    ):
        load(path)


class MarkerWriter:
    """Unpickling this object opens (and so creates) a marker file: code from the file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_never_runs_code(tmp_path):
    marker = tmp_path / "marker"
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["metadata"] = {"note": MarkerWriter(marker)}
    path = write_payload(tmp_path / "evil.pt", payload)

    with pytest.raises(CheckpointError, match=path_pattern(path)):
        load(path)
    with pytest.raises(CheckpointError, match=path_pattern(path)):
        load_metadata(path)

    assert not marker.exists()


def test_marker_payload_is_live(tmp_path):
    # Control: an unrestricted unpickler does run the payload of the test above.
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save({"note": MarkerWriter(marker)}, buffer)
    buffer.seek(0)

    loaded = torch.load(buffer, weights_only=False)

    loaded["note"].close()
    assert marker.exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(OSError, match="disk full"):
        save(trained_model(), tmp_path / "model.pt")

    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = save(trained_model(), tmp_path / "model.pt")
    old = path.read_bytes()

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    fresh = FusionModel(CONFIG)
    with pytest.raises(OSError, match="disk full"):
        save(fresh, path)

    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_file_holds_plain_types_only(tmp_path):
    # The weights_only reader accepts only plain types, so this proves the format claim.
    path = save(trained_model(), tmp_path / "model.pt", metadata={"seed": 1})

    payload = torch.load(path, weights_only=True)

    assert payload["format"] == checkpoint.FORMAT
    assert payload["format_version"] == checkpoint.FORMAT_VERSION
    assert payload["config"] == CONFIG.to_dict()
    assert all(tensor.device.type == "cpu" for tensor in payload["state_dict"].values())


ROUND_TRIP_CONFIGS = {
    "regression": FusionModelConfig(encoder=SMALL_ENCODER),
    "classification": FusionModelConfig(
        encoder=SMALL_ENCODER, head=FusionHeadConfig(sum_head="classification")
    ),
    "exact": FusionModelConfig(encoder=SMALL_ENCODER, head=FusionHeadConfig(sum_head="exact")),
    "features-film": FusionModelConfig(
        encoder=SMALL_ENCODER, head=FusionHeadConfig(fuse="features", combine="film")
    ),
    "logits-embedding": FusionModelConfig(
        encoder=SMALL_ENCODER,
        head=FusionHeadConfig(fuse="logits", side_encoding="embedding", side_dim=4),
    ),
    "group-avg-3x32": FusionModelConfig(
        encoder=ConvEncoderConfig(
            in_channels=3,
            image_size=32,
            channels=(4, 8),
            norm="group",
            num_groups=2,
            stage_pool=("avg", "max"),
            convs_per_stage=(1, 2),
        )
    ),  # fmt: skip
    "wide": FusionModelConfig(encoder=ConvEncoderConfig.wide()),
    "reference": FusionModelConfig(encoder=ConvEncoderConfig.reference()),
}


def perturbed(config: FusionModelConfig) -> FusionModel:
    """A model of ``config`` whose weights and norm statistics differ from a fresh one's."""
    torch.manual_seed(0)
    model = FusionModel(config).train()
    encoder = config.encoder
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
        images = torch.randn(4, encoder.in_channels, encoder.image_size, encoder.image_size)
        model(images, torch.randint(0, 10, (4,)))
    return model.eval()


def assert_same_outputs(before, after) -> None:
    for name, value in before._asdict().items():
        if value is None:
            assert getattr(after, name) is None, name
        else:
            assert torch.equal(getattr(after, name), value), name


@pytest.mark.parametrize("name", list(ROUND_TRIP_CONFIGS))
def test_round_trip_every_configuration(tmp_path, name):
    config = ROUND_TRIP_CONFIGS[name]
    model = perturbed(config)
    encoder = config.encoder
    images = torch.randn(3, encoder.in_channels, encoder.image_size, encoder.image_size)
    side = torch.tensor([0, 5, 9])

    loaded = load(save(model, tmp_path / "model.pt"))

    assert loaded.config == config
    with torch.no_grad():
        assert_same_outputs(model(images, side), loaded(images, side))


def test_round_trip_two_image_outputs(tmp_path):
    model = perturbed(ROUND_TRIP_CONFIGS["exact"])
    first, second = torch.randn(2, 3, 1, 28, 28)

    loaded = load(save(model, tmp_path / "model.pt"))

    with torch.no_grad():
        assert_same_outputs(model(first, second_image=second), loaded(first, second_image=second))


def test_file_of_earlier_version_loads(tmp_path):
    # The payload that mnist_fusion 0.1.0 wrote: its config dict lacks the newer fields.
    model = trained_model()
    payload = {
        "format": "mnist_fusion.model",
        "format_version": 1,
        "config": {
            "encoder": {
                "in_channels": 1, "image_size": 28, "channels": (4, 8), "convs_per_stage": 1,
                "kernel_size": 3, "norm": "batch", "activation": "relu", "dropout": 0.1,
                "pool": "flatten", "num_classes": 10,
            },
            "head": {
                "num_side_values": 10, "fuse": "logits", "temperature": 0.1, "hidden": 16,
                "sum_head": "regression",
            },
        },
        "state_dict": model.state_dict(),
        "metadata": {"seed": 0},
    }  # fmt: skip
    path = write_payload(tmp_path / "old.pt", payload)

    loaded = load(path)

    assert loaded.config == CONFIG
    with torch.no_grad():
        assert torch.equal(loaded(*inputs()).sum, model.eval()(*inputs()).sum)


def test_film_weights_missing(tmp_path):
    model = perturbed(ROUND_TRIP_CONFIGS["features-film"])
    payload = raw_payload(save(model, tmp_path / "model.pt"))
    del payload["state_dict"]["head.film.weight"]
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(CheckpointError, match=r"missing keys \['head\.film\.weight'\]"):
        load(path)


def test_exact_file_with_head_weights(tmp_path):
    # Weights of a learned head do not fit an exact head, which has none.
    payload = raw_payload(save(trained_model(), tmp_path / "model.pt"))
    payload["config"]["head"]["sum_head"] = "exact"
    payload["config"]["head"]["fuse"] = "probs"
    path = write_payload(tmp_path / "edited.pt", payload)

    with pytest.raises(CheckpointError, match=r"unexpected keys \['head\.linear\.bias', "):
        load(path)
