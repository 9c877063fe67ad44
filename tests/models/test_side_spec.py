import json
import math
import re

import pytest
import torch

from mnist_fusion.models import SideSpec
from mnist_fusion.models.side_spec import check_side_inputs, specs_from_dict


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SideSpec("ordinal"), "Invalid `kind`='ordinal'"),
        (
            lambda: SideSpec.categorical(0),
            "`cardinality` to be an integer >= 1 for a categorical side input, got 0",
        ),
        (lambda: SideSpec.categorical(True), "for a categorical side input, got True"),
        (lambda: SideSpec.categorical(3, encoding="fourier"), "Invalid `encoding`='fourier'"),
        (lambda: SideSpec.categorical(3, dim=0), "`dim` to be an integer >= 1, got 0"),
        (lambda: SideSpec.categorical(2, prior=(1.0,)), "a `prior` of 2 probabilities"),
        (lambda: SideSpec.categorical(2, prior=(1.0, 0.0)), "positive and finite"),
        (lambda: SideSpec.categorical(2, prior=(0.5, 0.6)), "sum to 1, but it sums to 1.1"),
        (lambda: SideSpec("categorical", cardinality=3, low=0.0), "must be left unset"),
        (lambda: SideSpec.continuous(1.0, 1.0), "finite `low` < `high`"),
        (lambda: SideSpec.continuous(0.0, math.inf), "finite `low` < `high`"),
        (lambda: SideSpec.continuous(0.0, 1.0, encoding="embedding"), "Invalid `encoding`"),
        (lambda: SideSpec.continuous(0.0, 1.0, encoding="fourier", dim=5), "even `dim`"),
        (lambda: SideSpec("continuous", cardinality=3, low=0.0, high=1.0), "left unset"),
        (lambda: SideSpec("continuous", low="0", high=1.0), "`low` to be a number"),
    ],
)
def test_spec_rejects(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_spec_defaults_per_kind():
    assert SideSpec.categorical(4).encoding == "one_hot"
    assert SideSpec.continuous().encoding == "linear"
    assert SideSpec("continuous", low=0, high=2).low == 0.0
    assert isinstance(SideSpec("continuous", low=0, high=2).low, float)


@pytest.mark.parametrize(
    ("spec", "width"),
    [
        (SideSpec.categorical(7), 7),
        (SideSpec.categorical(7, encoding="embedding", dim=3), 3),
        (SideSpec.continuous(encoding="linear", dim=5), 5),
        (SideSpec.continuous(encoding="fourier", dim=6), 6),
    ],
)
def test_spec_width(spec, width):
    assert spec.width == width


def test_spec_survives_json():
    spec = SideSpec.categorical(3, encoding="embedding", dim=4, prior=(0.2, 0.3, 0.5))
    data = json.loads(json.dumps(spec.to_dict()))

    rebuilt = specs_from_dict({"a": data})["a"]

    assert rebuilt == spec
    assert rebuilt.prior == (0.2, 0.3, 0.5)


def test_log_prior_uniform_and_given():
    uniform = SideSpec.categorical(4).log_prior()
    given = SideSpec.categorical(2, prior=(0.25, 0.75)).log_prior()

    torch.testing.assert_close(uniform.exp(), torch.full((4,), 0.25))
    torch.testing.assert_close(given.exp(), torch.tensor([0.25, 0.75]))


def test_continuous_has_no_prior_or_max():
    spec = SideSpec.continuous()
    with pytest.raises(ValueError, match="continuous"):
        spec.log_prior()
    with pytest.raises(ValueError, match="continuous"):
        _ = spec.max_value


@pytest.mark.parametrize(
    ("mapping", "error", "message"),
    [
        ({}, ValueError, "at least one side input"),
        ({"": SideSpec.categorical(2)}, TypeError, "non-empty strings"),
        ({"a.b": SideSpec.categorical(2)}, TypeError, "without '.'"),
        ({3: SideSpec.categorical(2)}, TypeError, "got 3"),
        ({"a": 10}, TypeError, "Expected a SideSpec for side input 'a', got int"),
        ({"a": {"kind": "categorical", "size": 3}}, ValueError, "Invalid spec for side input 'a'"),
    ],
)
def test_specs_from_dict_rejects(mapping, error, message):
    with pytest.raises(error, match=re.escape(message)):
        specs_from_dict(mapping)


SPECS = {"a": SideSpec.categorical(10), "x": SideSpec.continuous(0.0, 1.0)}


def good_inputs():
    return {"a": torch.tensor([0, 9, 4]), "x": torch.tensor([0.0, 0.5, 0.99])}


def test_check_accepts_good_inputs():
    check_side_inputs(SPECS, good_inputs(), 3, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("x"), "Side input(s) ['x'] are missing from the mapping"),
        (lambda s: s.update(b=torch.zeros(3)), "Unknown side input(s) ['b']"),
        (
            lambda s: s.update(a=torch.tensor([0, 10, 1])),
            "Side input 'a' has value 10, outside its spec categorical(10",
        ),
        (lambda s: s.update(a=torch.tensor([0, -1, 1])), "Side input 'a' has value -1"),
        (
            lambda s: s.update(x=torch.tensor([0.0, 1.0, 0.5])),
            "Side input 'x' has value 1.0, outside its spec continuous([0.0, 1.0)",
        ),
        (lambda s: s.update(x=torch.tensor([0.0, math.nan, 0.5])), "has value nan"),
        (lambda s: s.update(a=torch.tensor([0.0, 1.0, 2.0])), "Expected integer values for"),
        (lambda s: s.update(x=torch.tensor([0, 1, 0])), "Expected floating-point values for"),
        (lambda s: s.update(a=torch.tensor([0, 1])), "of shape [3] to match the images"),
    ],
)
def test_check_rejects(change, message):
    inputs = good_inputs()
    change(inputs)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_side_inputs(SPECS, inputs, 3, None)


def test_check_skips_missing_rows():
    inputs = good_inputs()
    inputs["a"] = torch.tensor([0, -99, 4])  # a placeholder where the value is missing
    missing = {"a": torch.tensor([False, True, False])}

    check_side_inputs(SPECS, inputs, 3, missing)
    with pytest.raises(ValueError, match="value -99"):
        check_side_inputs(SPECS, inputs, 3, None)


def test_check_names_declared_inputs():
    with pytest.raises(ValueError, match=re.escape("'a': categorical(10, encoding='one_hot')")):
        check_side_inputs(SPECS, {"x": good_inputs()["x"]}, 3, None)
