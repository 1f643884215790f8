"""Stage configs: bounds checked once, JSON round trip refusing unknown keys, cache-key fields."""

from __future__ import annotations

import argparse

import pytest

from lape.config import add_config_args, config_from_args
from lape.errors import LapeError
from lape.evaluate.perplexity import PerplexityConfig
from lape.evaluate.steering import SteerConfig
from lape.neurons.select import IdentifyConfig
from lape.neurons.stats import RecordConfig
from lape.pipeline import DemoConfig


@pytest.mark.parametrize("cls", [RecordConfig, IdentifyConfig, PerplexityConfig, SteerConfig, DemoConfig])
def test_round_trip_and_unknown_keys(cls):
    c = cls()
    assert cls.from_dict(c.to_dict()) == c
    with pytest.raises(LapeError, match=f"unknown {cls.__name__} setting"):
        cls.from_dict({**c.to_dict(), "typo": 1})


def test_bounds_are_checked_with_one_line_messages():
    cases = [(RecordConfig, "checkpoint_every", 0, "at least 1"), (RecordConfig, "batch_size", -1, "at least 1"),
             (RecordConfig, "tokens_per_language", 0, "greater than 0"), (SteerConfig, "strength", float("nan"), "finite"),
             (SteerConfig, "max_new_tokens", 0, "at least 1"), (PerplexityConfig, "random_baseline", "x", "use one of"),
             (IdentifyConfig, "top_rate", float("inf"), "finite")]
    for cls, name, value, needle in cases:
        with pytest.raises(LapeError, match=needle) as err:
            cls(**{name: value})
        assert f"{name} (--{name.replace('_', '-')})" in str(err.value) and "\n" not in str(err.value)


def test_key_dict_leaves_out_what_does_not_change_results():
    assert "checkpoint_every" not in RecordConfig().key_dict() and "seq_len" in RecordConfig().key_dict()
    assert "batch_size" not in SteerConfig().key_dict() and "chunk_size" not in PerplexityConfig().key_dict()


def test_cli_options_come_from_the_fields():
    p = argparse.ArgumentParser()
    add_config_args(p, SteerConfig)
    args = p.parse_args(["--strength", "2", "--layers", "1", "2", "--no-repeat-ngram-size", "0"])
    c = config_from_args(SteerConfig, args)
    assert c == SteerConfig(strength=2.0, layers=(1, 2), no_repeat_ngram_size=0)
