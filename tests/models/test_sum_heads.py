import pytest
import torch

from mnist_fusion.models import convolve_log_probs, expected_sum, shift_log_probs


def random_log_probs(n: int, classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=generator, dtype=torch.float64).log_softmax(-1)


def loop_shift(probs: torch.Tensor, side: torch.Tensor, num_side_values: int) -> torch.Tensor:
    """P(digit + side = k), by loops over the digit and the side value."""
    n, classes = probs.shape
    table = torch.zeros(n, classes + num_side_values - 1, dtype=probs.dtype)
    for row in range(n):
        for digit in range(classes):
            for value in range(num_side_values):
                weight = 1.0 if value == int(side[row]) else 0.0
                table[row, digit + value] += probs[row, digit] * weight
    return table


def loop_convolve(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """P(a + b = k) for independent a ~ first and b ~ second, by loops over a and b."""
    n, size_a = first.shape
    size_b = second.shape[1]
    table = torch.zeros(n, size_a + size_b - 1, dtype=first.dtype)
    for row in range(n):
        for a in range(size_a):
            for b in range(size_b):
                table[row, a + b] += first[row, a] * second[row, b]
    return table


@pytest.mark.parametrize(("classes", "num_side_values"), [(10, 10), (10, 3), (3, 5)])
def test_shift_matches_loops(classes, num_side_values):
    log_probs = random_log_probs(6, classes, seed=0)
    side = torch.arange(6) % num_side_values

    out = shift_log_probs(log_probs, side, num_side_values)

    expected = loop_shift(log_probs.exp(), side, num_side_values)
    torch.testing.assert_close(out.exp(), expected)


def test_shift_gradient_finite():
    logits = torch.randn(4, 10, requires_grad=True)

    out = shift_log_probs(logits.log_softmax(-1), torch.tensor([0, 9, 4, 2]), 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([3, 12, 4, 11])).backward()

    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(("size_a", "size_b"), [(10, 10), (10, 4), (2, 7)])
def test_convolve_matches_loops(size_a, size_b):
    first = random_log_probs(5, size_a, seed=1)
    second = random_log_probs(5, size_b, seed=2)

    out = convolve_log_probs(first, second)

    torch.testing.assert_close(out.exp(), loop_convolve(first.exp(), second.exp()))


def test_convolve_sums_to_one():
    out = convolve_log_probs(random_log_probs(8, 10, 3), random_log_probs(8, 10, 4))

    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(8, dtype=torch.float64))


def test_convolve_symmetric():
    first, second = random_log_probs(4, 10, 5), random_log_probs(4, 10, 6)

    torch.testing.assert_close(convolve_log_probs(first, second), convolve_log_probs(second, first))


def test_convolve_stable_for_tiny_probabilities():
    # Logits 200 apart: exp underflows to 0 in float32, so a product of probabilities
    # would give log(0) = -inf; log space keeps the exact value -400.
    logits = torch.tensor([[200.0, 0.0]])
    log_probs = logits.log_softmax(-1)

    out = convolve_log_probs(log_probs, log_probs)

    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2], torch.tensor(-400.0))


def test_convolve_gradient_finite():
    logits = torch.randn(3, 10, requires_grad=True)
    log_probs = logits.log_softmax(-1)

    out = convolve_log_probs(log_probs, log_probs.flip(0))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 9, 18])).backward()

    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("first", "second"), [((4, 10), (3, 10)), ((10,), (10,)), ((2, 3, 10), (2, 3, 10))]
)
def test_convolve_rejects_shapes(first, second):
    with pytest.raises(ValueError, match=r"Expected log-probabilities \[N, A\] and \[N, B\]"):
        convolve_log_probs(torch.zeros(first), torch.zeros(second))


def test_expected_sum_of_log_probs():
    log_probs = random_log_probs(5, 19, seed=7)

    expected = (log_probs.exp() * torch.arange(19, dtype=torch.float64)).sum(-1)

    torch.testing.assert_close(expected_sum(log_probs), expected)


def test_expected_sum_with_impossible_sums():
    log_probs = torch.tensor([[float("-inf"), 0.0, float("-inf")]])

    torch.testing.assert_close(expected_sum(log_probs), torch.tensor([1.0]))
