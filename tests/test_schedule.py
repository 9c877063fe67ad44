import math

import pytest
import torch

from mnist_fusion.cli import default_scheduler
from mnist_fusion.schedule import RestartingOneCycleLR, restart_cycle_steps


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW(torch.nn.Linear(2, 1).parameters())


def rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """Step ``scheduler`` ``steps`` times; return the rate before each step."""
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_one_cycle_matches_torch():
    ours = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(100,), pct_start=0.3)
    theirs = torch.optim.lr_scheduler.OneCycleLR(
        optimizer(), max_lr=0.01, total_steps=100, pct_start=0.3
    )

    torch.testing.assert_close(rates(ours, 100), rates(theirs, 100), rtol=1e-9, atol=1e-12)


def test_second_cycle_repeats_shape():
    scheduler = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(50, 100))
    reference = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(100,))

    values = rates(scheduler, 150)

    torch.testing.assert_close(values[50:], rates(reference, 100))


def test_restart_values():
    values = rates(RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(50, 100)), 150)

    assert math.isclose(values[0], 0.01 / 25)
    assert math.isclose(values[49], 0.01 / 25 / 1e4)
    assert math.isclose(values[50], 0.01 / 25)
    assert math.isclose(max(values[:50]), 0.01)
    assert math.isclose(max(values[50:]), 0.01)


def test_steps_past_end_keep_final_rate():
    scheduler = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(10,))

    values = rates(scheduler, 15)

    assert values[10:] == [pytest.approx(0.01 / 25 / 1e4)] * 5


def test_total_steps_attribute():
    scheduler = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=[30, 70])

    assert scheduler.total_steps == 100
    assert scheduler.cycle_steps == (30, 70)


def test_state_dict_resumes_rates():
    first = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(20, 40))
    rates(first, 25)
    second = RestartingOneCycleLR(optimizer(), max_lr=0.01, cycle_steps=(20, 40))

    second.load_state_dict(first.state_dict())

    assert second.state_dict()["cycle_steps"] == (20, 40)
    assert rates(second, 10) == rates(first, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cycle_steps": ()}, "at least one cycle"),
        ({"cycle_steps": (10, 1)}, "at least 2 steps"),
        ({"pct_start": 1.0}, r"`pct_start` in \(0, 1\), but got 1.0"),
        ({"max_lr": 0.0}, "positive `max_lr`, but got 0.0"),
        ({"div_factor": -1.0}, "positive `div_factor`"),
    ],
)
def test_invalid_schedule(kwargs, message):
    arguments = {"max_lr": 0.01, "cycle_steps": (10,), **kwargs}

    with pytest.raises(ValueError, match=message):
        RestartingOneCycleLR(optimizer(), **arguments)


@pytest.mark.parametrize(
    ("epochs", "first", "expected"),
    [
        (5, 1.5, (150, 350)),
        (3, 1.5, (150, 150)),
        (2, 1.5, (200,)),
        (1, 1.5, (100,)),
        (4, 0.01, (2, 398)),
    ],
)
def test_restart_cycle_steps(epochs, first, expected):
    cycles = restart_cycle_steps(epochs=epochs, steps_per_epoch=100, first_cycle_epochs=first)

    assert cycles == expected
    assert sum(cycles) == epochs * 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "`epochs` and `steps_per_epoch` >= 1"),
        ({"steps_per_epoch": 0}, "`epochs` and `steps_per_epoch` >= 1"),
        ({"first_cycle_epochs": 0.0}, "positive `first_cycle_epochs`"),
    ],
)
def test_restart_cycle_steps_invalid(kwargs, message):
    arguments = {"epochs": 5, "steps_per_epoch": 100, "first_cycle_epochs": 1.5, **kwargs}

    with pytest.raises(ValueError, match=message):
        restart_cycle_steps(**arguments)


def test_restart_cycle_steps_default_first_cycle():
    assert restart_cycle_steps(epochs=5, steps_per_epoch=100) == (100, 400)


def test_default_scheduler_cycles():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())

    scheduler = default_scheduler(optimizer, max_lr=0.02, epochs=5, steps_per_epoch=469)

    assert scheduler.cycle_steps == (469, 1876)
    assert math.isclose(scheduler.get_last_lr()[0], 0.02 / 25)
