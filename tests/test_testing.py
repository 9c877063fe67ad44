"""Tests of the hypothesis strategies and the pairing check offered to users."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import Dataset, TensorDataset

from mnist_fusion.data import FusionDataset, TensorFusionDataset
from mnist_fusion.testing import check_pairing, fused_datasets, image_datasets, side_inputs


class _ShiftedSide(Dataset):
    """A side input read one index off: the kind of misalignment the check must catch."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.values[(index + 1) % len(self.values)]


@given(fused_datasets(max_size=12))
def test_check_passes_on_fused(fused):
    check_pairing(fused, expected_targets={"sum": lambda label, side: label + side})


@given(image_datasets(min_size=2, max_size=10), st.data())
def test_check_catches_shifted_side(images, data):
    values = data.draw(side_inputs(len(images)))
    if torch.equal(values, values.roll(-1)):
        return  # A constant side input cannot show a shift.
    fused = FusionDataset(images, _ShiftedSide(values))
    with pytest.raises(AssertionError, match="Pairing broken at index"):
        check_pairing(fused, side=values)


def test_check_catches_wrong_target():
    images = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([1, 2, 3, 4]))
    fused = FusionDataset(images, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(AssertionError, match="index 0: sum does not match"):
        check_pairing(fused, expected_targets={"sum": lambda label, side: label * side})


def test_check_with_workers():
    images = TensorDataset(torch.rand(20, 1, 2, 2), torch.arange(20) % 10)
    fused = FusionDataset(images, torch.arange(20) % 7)
    check_pairing(fused, num_workers=2, batch_size=3)


@given(fused_datasets(max_size=10, names=["a", "b"]))
def test_check_passes_on_named(fused):
    check_pairing(
        fused, expected_targets={"sum": lambda label, side: label + side["a"] + side["b"]}
    )


@given(image_datasets(min_size=2, max_size=10), st.data())
def test_check_catches_shifted_named_side(images, data):
    values = data.draw(side_inputs(len(images)))
    if torch.equal(values, values.roll(-1)):
        return  # A constant side input cannot show a shift.
    fused = FusionDataset(images, {"a": torch.zeros(len(images)), "b": _ShiftedSide(values)})
    with pytest.raises(AssertionError, match="Pairing broken at index"):
        check_pairing(fused, side={"a": torch.zeros(len(images)), "b": values})


def test_check_named_continuous_with_workers():
    images = TensorDataset(torch.rand(20, 1, 2, 2), torch.arange(20) % 10)
    side = {"x": torch.linspace(0, 1, 20), "d": torch.arange(20) % 3}
    fused = FusionDataset(images, side)
    check_pairing(
        fused,
        expected_targets={"sum": lambda label, side: label + side["x"] + side["d"]},
        num_workers=2,
        batch_size=3,
    )


@given(side_inputs(7, low=2, high=4))
def test_side_inputs_in_range(side):
    assert side.dtype == torch.int64
    assert side.shape == (7,)
    assert int(side.min()) >= 2
    assert int(side.max()) <= 4


def test_check_float_target_tolerates_order():
    images = TensorDataset(torch.rand(30, 1, 2, 2), torch.arange(30) % 10)
    side = {"a": torch.arange(30) % 10, "x": torch.linspace(0.01, 0.99, 30)}
    fused = FusionDataset(images, side)

    # The dataset adds a + x to the label; this formula adds them in another order.
    check_pairing(
        fused, expected_targets={"sum": lambda label, side: side["x"] + (label + side["a"])}
    )


def test_check_float_target_still_catches_errors():
    images = TensorDataset(torch.rand(4, 1, 2, 2), torch.arange(4))
    fused = FusionDataset(images, {"x": torch.tensor([0.1, 0.2, 0.3, 0.4])})
    with pytest.raises(AssertionError, match="index 0: sum does not match"):
        check_pairing(fused, expected_targets={"sum": lambda label, side: label + side["x"] + 1e-3})


def test_check_rejects_tensor_dataset():
    data = TensorFusionDataset(
        torch.zeros(2, 2, 2, dtype=torch.uint8), torch.arange(2), torch.arange(2)
    )
    with pytest.raises(
        TypeError, match="check_pairing checks a FusionDataset, but got TensorFusionDataset"
    ):
        check_pairing(data)


@pytest.mark.parametrize("names", ["ab", ["a", "a"]])
@given(data=st.data())
def test_fused_datasets_rejects_names(names, data):
    with pytest.raises(ValueError, match="distinct names"):
        data.draw(fused_datasets(names=names))
