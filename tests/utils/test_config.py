"""key=value overrides: parsed as YAML, and a value that is not YAML is a ConfigError naming the override."""

from __future__ import annotations

import pytest

from larp.utils.config import ConfigError, apply_overrides


def test_override_values_are_parsed_as_yaml():
    assert apply_overrides({"run": {"max_steps": 1, "betas": None}}, ["run.max_steps=7", "run.betas=[0.9, 0.95]"]) \
        == {"run": {"max_steps": 7, "betas": [0.9, 0.95]}}


@pytest.mark.parametrize("value", ["[1,", "{a: 1", "'unclosed", "a: b: c"])
def test_an_override_that_is_not_yaml_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"override .run.max_steps=.* has a value that is not valid YAML"):
        apply_overrides({"run": {"max_steps": 1}}, [f"run.max_steps={value}"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1.5])
def test_an_integer_field_refuses_non_integral_numbers_by_name(value):
    from dataclasses import dataclass

    from larp.utils.config import from_dict

    @dataclass
    class Run:
        max_steps: int = 1

    with pytest.raises(ConfigError, match=r"recipe.max_steps: expected an integer, got"):
        from_dict(Run, {"max_steps": value}, "recipe")
    assert from_dict(Run, {"max_steps": 4.0}, "recipe").max_steps == 4
