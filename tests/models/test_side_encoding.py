import re

import pytest
import torch

from mnist_fusion.models import SideEncoding


def test_one_hot_values():
    code = SideEncoding("one_hot", 4)(torch.tensor([3, 0, 1]))

    expected = torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(code, expected)


def test_one_hot_has_no_parameters():
    assert list(SideEncoding("one_hot", 10).parameters()) == []


@pytest.mark.parametrize(("kind", "width"), [("one_hot", 7), ("embedding", 3)])
def test_width(kind, width):
    encoding = SideEncoding(kind, 7, dim=3)

    assert encoding.width == width
    assert encoding(torch.tensor([0, 6])).shape == (2, width)


def test_embedding_rows():
    encoding = SideEncoding("embedding", 5, dim=4)
    side = torch.tensor([4, 1, 4])

    torch.testing.assert_close(encoding(side), encoding.embedding.weight[side])


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_narrow_dtype(dtype):
    encoding = SideEncoding("embedding", 5, dim=4)
    side = torch.tensor([4, 1, 0])

    torch.testing.assert_close(encoding(side.to(dtype)), encoding(side))


def test_unknown_kind():
    with pytest.raises(
        ValueError,
        match=re.escape("`side_encoding`='ordinal'; expected one of ['one_hot', 'embedding']"),
    ):
        SideEncoding("ordinal", 10)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("num_values", {"num_values": 0}), ("dim", {"dim": 0})]
)
def test_size_below_one(name, kwargs):
    arguments = {"num_values": 10, **kwargs}

    with pytest.raises(ValueError, match=rf"`{name}` >= 1 for the side encoding, got 0"):
        SideEncoding("embedding", arguments.pop("num_values"), **arguments)
