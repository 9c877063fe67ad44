import re

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import functional

from mnist_fusion.data import (
    MNIST_MEAN,
    MNIST_STD,
    BatchLoader,
    MNISTSum,
    RandomDigits,
    TensorFusionDataset,
    read_idx,
    side_seed,
)

FIELDS = ["image", "side", "digit", "sum", "index"]


def small_data(count: int = 10) -> TensorFusionDataset:
    generator = torch.Generator().manual_seed(count)
    images = torch.randint(0, 256, (count, 4, 4), dtype=torch.uint8, generator=generator)
    return TensorFusionDataset(images, torch.arange(count) % 10, torch.arange(count) % 3)


def epoch_indices(loader: BatchLoader) -> list[int]:
    return torch.cat([batch["index"] for batch in loader]).tolist()


class CountingDataset(TensorFusionDataset):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.getitems_calls = 0

    def __getitems__(self, indices):
        self.getitems_calls += 1
        return super().__getitems__(indices)


@pytest.fixture(scope="module")
def per_item(tiny_mnist_root) -> MNISTSum:
    return MNISTSum(tiny_mnist_root, train=True, seed=3)


@pytest.fixture(scope="module")
def tensors(per_item) -> TensorFusionDataset:
    return per_item.as_tensors()


# Bit-for-bit agreement with the per-item path


@pytest.mark.parametrize("field", FIELDS)
def test_batch_equals_per_item(per_item, tensors, field):
    indices = torch.randperm(len(per_item), generator=torch.Generator().manual_seed(0))

    batch = tensors.batch(indices)
    stacked = torch.stack([torch.as_tensor(per_item[int(i)][field]) for i in indices])

    assert torch.equal(batch[field], stacked)


@pytest.mark.parametrize("index", [0, 17, 1199, -1, -1200])
def test_getitem_equals_per_item(per_item, tensors, index):
    expected = per_item[index]

    sample = tensors[index]

    assert sample.keys() == expected.keys()
    for field in FIELDS:
        assert torch.equal(sample[field], torch.as_tensor(expected[field])), field


def test_image_dtype_and_shape(tensors):
    batch = tensors.batch(torch.tensor([0, 1]))

    assert batch["image"].dtype == torch.float32
    assert batch["image"].shape == (2, 1, 28, 28)


@pytest.mark.parametrize("field", ["side", "digit", "sum", "index"])
def test_integer_fields_int64(tensors, field):
    assert tensors.batch(torch.tensor([3, 4]))[field].dtype == torch.int64


def test_normalisation_matches_torchvision():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=generator)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    data = TensorFusionDataset(
        images, torch.zeros(6, dtype=torch.int64), torch.zeros(6).long(), mean=mean, std=std
    )

    batch = data.batch(torch.arange(6))

    expected = torch.stack(
        [functional.normalize(image.to(torch.float32).div(255), mean, std) for image in images]
    )
    assert torch.equal(batch["image"], expected)


def test_default_normalisation_values():
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    data = TensorFusionDataset(images, torch.tensor([0]), torch.tensor([0]))

    image = data[0]["image"]

    expected = torch.tensor([[[-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD]]])
    torch.testing.assert_close(image, expected)


def test_sum_is_label_plus_side():
    labels = torch.tensor([3, 1, 4, 1, 5])
    side = torch.tensor([9, 2, 6, 5, 3])
    data = TensorFusionDataset(torch.zeros(5, 2, 2, dtype=torch.uint8), labels, side)

    batch = data.batch(torch.tensor([4, 0, 2]))

    assert batch["sum"].tolist() == [8, 12, 10]
    assert batch["digit"].tolist() == [5, 3, 4]


def test_custom_targets_on_batches():
    data = TensorFusionDataset(
        torch.zeros(3, 2, 2, dtype=torch.uint8),
        torch.tensor([7, 8, 9]),
        torch.tensor([1, 2, 3]),
        targets={"difference": lambda label, side: label - side},
    )

    batch = data.batch(torch.tensor([2, 0]))

    assert sorted(batch) == ["difference", "image", "index", "side"]
    assert batch["difference"].tolist() == [6, 6]


def test_negative_indices_counted_from_start():
    data = small_data(5)

    batch = data.batch(torch.tensor([-1, -5, 2]))

    assert batch["index"].tolist() == [4, 0, 2]


def test_negative_indices_select_rows():
    data = small_data(5)

    assert torch.equal(
        data.batch(torch.tensor([-1]))["image"], data.batch(torch.tensor([4]))["image"]
    )


def test_empty_batch():
    batch = small_data(5).batch(torch.tensor([], dtype=torch.int64))

    assert batch["image"].shape == (0, 1, 4, 4)


def test_two_reads_equal():
    data = small_data(5)

    first = data.batch(torch.tensor([1, 3]))
    second = data.batch(torch.tensor([1, 3]))

    for field in FIELDS:
        assert torch.equal(first[field], second[field]), field


def test_written_batch_leaves_dataset():
    data = small_data(5)
    batch = data.batch(torch.tensor([0]))

    batch["side"].add_(100)
    batch["digit"].add_(100)

    assert int(data[0]["side"]) == 0
    assert int(data[0]["digit"]) == 0


def test_repr():
    expected = "TensorFusionDataset(length=10, image_shape=(1, 4, 4), targets=['digit', 'sum'])"

    assert repr(small_data(10)) == expected


# __getitems__ and DataLoader


def test_getitems_equals_getitem(tensors):
    indices = [5, 0, 1199, -3, 5]

    items = tensors.__getitems__(indices)

    assert len(items) == len(indices)
    for item, index in zip(items, indices, strict=True):
        expected = tensors[index]
        for field in FIELDS:
            assert torch.equal(item[field], expected[field]), field


def test_getitems_empty():
    assert small_data(5).__getitems__([]) == []


def test_getitems_index_past_end():
    with pytest.raises(IndexError, match=r"Index 5 is out of range.*-5 to 4"):
        small_data(5).__getitems__([0, 5])


def test_dataloader_calls_getitems():
    base = small_data(30)
    data = CountingDataset(base.images, base.labels, base.side)
    loader = DataLoader(data, batch_size=8)

    batches = list(loader)

    assert data.getitems_calls == len(batches) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_equal_batch(tensors, workers):
    loader = DataLoader(
        tensors,
        batch_size=100,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(1),
    )

    seen = []
    for batch in loader:
        expected = tensors.batch(batch["index"])
        for field in FIELDS:
            assert torch.equal(batch[field], expected[field]), field
        seen += batch["index"].tolist()

    assert sorted(seen) == list(range(len(tensors)))


def test_dataloader_pairs_labels(tiny_mnist_root, tensors):
    labels = read_idx(tiny_mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte").long()
    side = RandomDigits(len(labels), seed=side_seed(3, train=True)).values
    loader = DataLoader(tensors, batch_size=64, shuffle=True, num_workers=2)

    for batch in loader:
        index = batch["index"]
        assert torch.equal(batch["sum"], labels[index] + side[index])


# BatchLoader


@pytest.mark.parametrize(("count", "batch_size"), [(10, 3), (10, 5), (10, 20), (1, 1)])
def test_loader_covers_every_index(count, batch_size):
    loader = BatchLoader(small_data(count), batch_size=batch_size, shuffle=True, seed=2)

    for _ in range(3):
        assert sorted(epoch_indices(loader)) == list(range(count))


def test_loader_keeps_last_partial_batch():
    loader = BatchLoader(small_data(10), batch_size=4)

    sizes = [len(batch["index"]) for batch in loader]

    assert sizes == [4, 4, 2]
    assert len(loader) == 3


def test_loader_drop_last():
    loader = BatchLoader(small_data(10), batch_size=4, shuffle=True, drop_last=True)

    batches = list(loader)

    assert [len(batch["index"]) for batch in batches] == [4, 4]
    assert len(loader) == 2
    assert len(set(torch.cat([batch["index"] for batch in batches]).tolist())) == 8


def test_loader_drop_last_exact_multiple():
    loader = BatchLoader(small_data(8), batch_size=4, drop_last=True)

    assert [len(batch["index"]) for batch in loader] == [4, 4]


def test_loader_empty_dataset():
    empty = TensorFusionDataset(
        torch.zeros(0, 2, 2, dtype=torch.uint8), torch.zeros(0).long(), torch.zeros(0).long()
    )
    loader = BatchLoader(empty, batch_size=4, shuffle=True)

    assert list(loader) == []
    assert len(loader) == 0


def test_loader_unshuffled_order():
    loader = BatchLoader(small_data(10), batch_size=3)

    assert epoch_indices(loader) == list(range(10))


def test_loader_batches_equal_batch():
    data = small_data(10)
    loader = BatchLoader(data, batch_size=4, shuffle=True, seed=5)

    for batch in loader:
        expected = data.batch(batch["index"])
        for field in FIELDS:
            assert torch.equal(batch[field], expected[field]), field


def test_loader_epochs_differ():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=0)

    assert epoch_indices(loader) != epoch_indices(loader)


def test_loader_order_depends_on_seed_only():
    torch.manual_seed(0)
    first = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=9)
    first_orders = [epoch_indices(first) for _ in range(2)]

    torch.manual_seed(12345)
    torch.rand(100)
    second = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=9)
    second_orders = [epoch_indices(second) for _ in range(2)]

    assert first_orders == second_orders


def test_loader_seeds_differ():
    first = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=1)
    second = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=2)

    assert epoch_indices(first) != epoch_indices(second)


def test_loader_leaves_global_rng():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=1)
    state = torch.get_rng_state()

    epoch_indices(loader)

    assert torch.equal(torch.get_rng_state(), state)


def test_loader_state_reproduces_next_epoch():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=4)
    epoch_indices(loader)
    state = loader.state_dict()
    expected = epoch_indices(loader)

    resumed = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=99)
    resumed.load_state_dict(state)

    assert epoch_indices(resumed) == expected


def test_loader_state_records_its_seed():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=4)
    other = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=99)

    other.load_state_dict(loader.state_dict())

    assert loader.state_dict()["seed"] == 4
    # The loaded generator continues seed 4's stream, so the next state records seed 4.
    assert other.state_dict()["seed"] == 4


def test_loader_state_without_seed_keeps_seed():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=4)
    other = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=99)

    other.load_state_dict({"generator": loader.state_dict()["generator"]})

    assert other.state_dict()["seed"] == 99


def test_loader_state_without_generator_tensor_rejected():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True)

    with pytest.raises(TypeError, match="`generator` to be a tensor, got int"):
        loader.load_state_dict({"generator": 4, "seed": 4})


def test_loader_state_is_a_snapshot():
    loader = BatchLoader(small_data(50), batch_size=7, shuffle=True, seed=4)
    state = loader.state_dict()
    expected = epoch_indices(loader)

    epoch_indices(loader)
    loader.load_state_dict(state)

    assert epoch_indices(loader) == expected


# Bad inputs


def test_float_images_rejected():
    with pytest.raises(TypeError, match=r"uint8 images, but got dtype torch.float32"):
        TensorFusionDataset(torch.zeros(3, 2, 2), torch.arange(3), torch.arange(3))


@pytest.mark.parametrize("name", ["labels", "side"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_non_integer_labels_rejected(name, dtype):
    arguments = {"labels": torch.arange(3), "side": torch.arange(3)}
    arguments[name] = torch.zeros(3, dtype=dtype)

    with pytest.raises(TypeError, match=rf"integer {name}, but got dtype {dtype}"):
        TensorFusionDataset(torch.zeros(3, 2, 2, dtype=torch.uint8), **arguments)


@pytest.mark.parametrize("name", ["images", "labels", "side"])
def test_non_tensor_rejected(name):
    arguments = {
        "images": torch.zeros(3, 2, 2, dtype=torch.uint8),
        "labels": torch.arange(3),
        "side": torch.arange(3),
    }
    arguments[name] = arguments[name].numpy()

    with pytest.raises(TypeError, match=rf"`{name}` to be a torch.Tensor, but got ndarray"):
        TensorFusionDataset(**arguments)


def test_length_mismatch():
    with pytest.raises(
        ValueError, match=r"but got 3 images and lengths \{'labels': 2, 'side': 3\}"
    ):
        TensorFusionDataset(
            torch.zeros(3, 2, 2, dtype=torch.uint8), torch.arange(2), torch.arange(3)
        )


@pytest.mark.parametrize("name", ["labels", "side"])
def test_column_labels_rejected(name):
    arguments = {"labels": torch.arange(3), "side": torch.arange(3)}
    arguments[name] = torch.arange(3).view(3, 1)

    with pytest.raises(ValueError, match=rf"1-D {name} of shape \[N\], but got shape \(3, 1\)"):
        TensorFusionDataset(torch.zeros(3, 2, 2, dtype=torch.uint8), **arguments)


@pytest.mark.parametrize("shape", [(3, 4), (3, 1, 1, 2, 2)])
def test_image_rank_rejected(shape):
    images = torch.zeros(shape, dtype=torch.uint8)

    with pytest.raises(ValueError, match=rf"\[N, C, H, W\], but got shape {re.escape(str(shape))}"):
        TensorFusionDataset(images, torch.arange(3), torch.arange(3))


def test_batch_mask_rejected():
    with pytest.raises(TypeError, match=r"integer indices, but got dtype torch.bool"):
        small_data(3).batch(torch.tensor([True, False, True]))


def test_batch_float_indices_rejected():
    with pytest.raises(TypeError, match=r"integer indices, but got dtype torch.float32"):
        small_data(3).batch(torch.tensor([0.0, 1.0]))


def test_batch_list_rejected():
    with pytest.raises(TypeError, match=r"`indices` to be a tensor, but got list"):
        small_data(3).batch([0, 1])


def test_batch_2d_indices_rejected():
    with pytest.raises(ValueError, match=r"1-D indices, but got shape \(1, 2\)"):
        small_data(3).batch(torch.tensor([[0, 1]]))


@pytest.mark.parametrize("index", [3, -4])
def test_batch_index_out_of_range(index):
    with pytest.raises(IndexError, match=rf"Index {index} is out of range.*-3 to 2"):
        small_data(3).batch(torch.tensor([0, index]))


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match=r"Index 3 is out of range for a dataset of length 3"):
        small_data(3)[3]


@pytest.mark.parametrize("batch_size", [0, -1, True, False, 2.5, "4", None])
def test_bad_batch_size(batch_size):
    pattern = rf"`batch_size` to be a positive integer, got {re.escape(repr(batch_size))}"
    with pytest.raises(ValueError, match=pattern):
        BatchLoader(small_data(3), batch_size=batch_size)


@pytest.mark.parametrize("seed", [1.5, "1", True])
def test_bad_seed(seed):
    with pytest.raises(
        ValueError, match=rf"`seed` to be an integer, but got {re.escape(repr(seed))}"
    ):
        BatchLoader(small_data(3), batch_size=2, seed=seed)
