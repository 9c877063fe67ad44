"""Exact sum distributions: the law of a sum of independent digits, in log space.

If a digit has probabilities ``p`` and an independent addend has probabilities ``q``,
their sum has ``P(k) = sum_a p[a] * q[k - a]``, the convolution of ``p`` with ``q``.
These functions compute its logarithm from log-probabilities with ``logsumexp``, so no
probability underflows to zero before the logarithm is taken. They have no parameters:
a loss on the sum trains whatever produced ``p`` and ``q``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mnist_fusion.models.side_spec import SideSpec

__all__ = ["add_side_log_probs", "convolve_log_probs", "expected_sum", "shift_log_probs"]


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

    terms = terms.masked_fill(~valid, float("-inf"))  # (N, K, A)
    return _safe_logsumexp(terms)  # (N, K)


def _safe_logsumexp(terms: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last dimension whose gradient stays finite.

    A row of ``-inf`` only (a sum that no pair reaches, once an input has ``-inf``
    entries) has a ``logsumexp`` of ``-inf`` and a NaN gradient. Such rows are
    computed on zeros instead and set to ``-inf`` afterwards, so that ``torch.where``
    sends them a zero gradient.
    """
    reachable = torch.isfinite(terms).any(dim=-1)  # (N, K)
    safe_terms = torch.where(reachable[..., None], terms, torch.zeros_like(terms))
    minus_inf = torch.full_like(reachable, float("-inf"), dtype=terms.dtype)
    return torch.where(reachable, safe_terms.logsumexp(dim=-1), minus_inf)  # (N, K)


def add_side_log_probs(
    log_probs: torch.Tensor,
    side: Mapping[str, torch.Tensor],
    specs: Mapping[str, SideSpec],
    missing: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-probabilities of the digit plus every categorical side input.

    A known input shifts the distribution by its value. A missing one (True in its
    ``missing`` mask) is averaged over its prior: the distribution is convolved with
    ``spec.log_prior()``, so the result is the law of the sum given what is known.

    Args:
        log_probs: Digit log-probabilities ``[N, C]``.
        side: Integer values ``{name: [N]}``; values in missing rows are ignored.
        specs: Categorical specs ``{name: SideSpec}``, in the order they are added.
        missing: Boolean masks ``{name: [N]}``; an absent name is never missing.

    Returns:
        Log-probabilities of the sums ``0 .. C - 1 + sum(cardinality - 1)``.

    Examples:
        >>> coin = torch.tensor([[0.5, 0.5]]).log()
        >>> specs = {"a": SideSpec.categorical(2), "b": SideSpec.categorical(2)}
        >>> side = {"a": torch.tensor([1]), "b": torch.tensor([0])}
        >>> add_side_log_probs(coin, side, specs, {"b": torch.tensor([True])}).exp()
        tensor([[0.0000, 0.2500, 0.5000, 0.2500]])
    """
    missing = missing or {}
    for name, spec in specs.items():
        cardinality = spec.cardinality
        if cardinality is None:
            raise ValueError(
                f"Side input {name!r} is {spec.describe()}; only categorical inputs can be "
                "added to a digit distribution."
            )
        mask = missing.get(name)
        if mask is None:
            log_probs = shift_log_probs(log_probs, side[name], cardinality)
            continue

        values = side[name].long().clamp(0, cardinality - 1)  # placeholders may be anything
        point_mass = F.one_hot(values, cardinality).to(log_probs.dtype).log()  # (N, S)
        prior = spec.log_prior(device=log_probs.device).to(log_probs.dtype)  # (S,)
        law = torch.where(mask[:, None], prior.expand_as(point_mass), point_mass)  # (N, S)
        log_probs = convolve_log_probs(log_probs, law)
    return log_probs


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
