"""Exact sum distributions: the law of a sum of independent digits, in log space.

If a digit has probabilities ``p`` and an independent addend has probabilities ``q``,
their sum has ``P(k) = sum_a p[a] * q[k - a]``, the convolution of ``p`` with ``q``.
These functions compute its logarithm from log-probabilities with ``logsumexp``, so no
probability underflows to zero before the logarithm is taken. They have no parameters:
a loss on the sum trains whatever produced ``p`` and ``q``.
"""

from __future__ import annotations

import torch

__all__ = ["convolve_log_probs", "expected_sum", "shift_log_probs"]


def shift_log_probs(
    log_probs: torch.Tensor, side: torch.Tensor, num_side_values: int
) -> torch.Tensor:
    """Log-probabilities of ``digit + side`` for a known integer ``side``.

    A known side value is a point mass, and the convolution with a point mass is a
    shift: ``log P(sum = k) = log_probs[k - side]``, and ``-inf`` where ``k - side`` is
    not a digit. Computing the shift directly, rather than a ``logsumexp`` over terms
    that are all ``-inf`` for those sums, keeps every gradient finite.

    Args:
        log_probs: Digit log-probabilities ``[N, C]``.
        side: Integer side values ``[N]`` in ``[0, num_side_values)``.
        num_side_values: Number of possible side values ``S``.

    Returns:
        Log-probabilities of the sums ``0 .. C + S - 2``, ``[N, C + S - 1]``.

    Examples:
        >>> log_probs = torch.tensor([[0.7, 0.2, 0.1]]).log()
        >>> shift_log_probs(log_probs, torch.tensor([1]), 2).exp()
        tensor([[0.0000, 0.7000, 0.2000, 0.1000]])
    """
    num_classes = log_probs.shape[-1]
    sums = torch.arange(num_classes + num_side_values - 1, device=log_probs.device)

    digit = sums[None, :] - side.long()[:, None]  # (N, K): the digit each sum needs
    valid = (digit >= 0) & (digit < num_classes)  # (N, K)
    gathered = log_probs.gather(-1, digit.clamp(0, num_classes - 1))  # (N, K)
    return gathered.masked_fill(~valid, float("-inf"))  # (N, K)


def convolve_log_probs(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the sum of two independent digits.

    ``log P(sum = k) = logsumexp_a (first[a] + second[k - a])`` over the digits ``a``
    for which ``k - a`` is a digit of ``second``. This is the exact sum head of
    two-image addition: both distributions come from the same digit classifier.

    Args:
        first: Log-probabilities ``[N, A]`` of the first digit.
        second: Log-probabilities ``[N, B]`` of the second digit.

    Returns:
        Log-probabilities of the sums ``0 .. A + B - 2``, ``[N, A + B - 1]``.

    Raises:
        ValueError: If the inputs are not 2-D or their batch sizes differ.

    Examples:
        >>> coin = torch.tensor([[0.5, 0.5]]).log()
        >>> convolve_log_probs(coin, coin).exp()
        tensor([[0.2500, 0.5000, 0.2500]])
    """
    if first.ndim != 2 or second.ndim != 2 or first.shape[0] != second.shape[0]:
        raise ValueError(
            "Expected log-probabilities [N, A] and [N, B] with one batch size, but got "
            f"{list(first.shape)} and {list(second.shape)}."
        )
    size_a, size_b = first.shape[1], second.shape[1]
    sums = torch.arange(size_a + size_b - 1, device=first.device)
    digits = torch.arange(size_a, device=first.device)

    partner = sums[:, None] - digits[None, :]  # (K, A): the second digit each pair needs
    valid = (partner >= 0) & (partner < size_b)  # (K, A)
    second_terms = second[:, partner.clamp(0, size_b - 1)]  # (N, K, A)
    terms = first[:, None, :] + second_terms  # (N, K, A)

    # Every sum has at least one valid pair, so each logsumexp row has a finite term
    # and its gradient stays finite.
    terms = terms.masked_fill(~valid, float("-inf"))  # (N, K, A)
    return terms.logsumexp(dim=-1)  # (N, K)


def expected_sum(sum_logits: torch.Tensor) -> torch.Tensor:
    """Mean of the sum under ``softmax(sum_logits)``.

    For log-probabilities the softmax returns the probabilities themselves, so this is
    the mean of an exact sum distribution too.

    Args:
        sum_logits: Scores or log-probabilities ``[N, K]`` of the sums ``0 .. K - 1``.

    Returns:
        The expected sum per sample, ``[N]``.

    Examples:
        >>> expected_sum(torch.tensor([[0.25, 0.5, 0.25]]).log())
        tensor([1.])
    """
    values = torch.arange(sum_logits.shape[-1], device=sum_logits.device)
    probs = sum_logits.softmax(dim=-1)  # (N, K)
    return probs @ values.to(probs.dtype)  # (N,)
