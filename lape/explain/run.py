"""Explain neuron sets end to end: the cards, the page and the JSON export (``lape demo``'s
stage and ``lape explain``), optionally beside a random control of each set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import LapeError
from ..masks import NeuronSets
from ..runningstats import dist_info
from ..space import NeuronSpace
from .cards import ExplainConfig, NeuronCards, explain, neuron_table
from .page import write_page
from .report import CONTROL_PREFIX


def _set_names(folders: Sequence[str]) -> list[str]:
    names = [Path(f).name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{Path(f).parent.name}/{Path(f).name}" for f in folders]
    return names


def load_neuron_sets(folders: Sequence[str], model: nn.Module, space: NeuronSpace) -> dict[str, NeuronSets]:
    """``{name: NeuronSets}`` of neuron-set folders (named by folder, or parent/folder where two
    share a name); a regions folder gives its neuron view (neurons with at least
    :data:`lape.keyneurons.compare.REGION_MIN_SHARE` of their parameters in the region)."""
    from .. import artifacts
    from ..keyneurons.compare import region_neuron_sets
    from ..masks import ParamRegions

    sets = {}
    for name, folder in zip(_set_names(folders), folders):
        kind = artifacts.kind_of(folder)
        if kind == NeuronSets.KIND:
            sets[name] = NeuronSets.load(folder, model=model)
        elif kind == ParamRegions.KIND:
            sets[name] = region_neuron_sets(ParamRegions.load(folder, model=model), space)
        else:
            raise LapeError(f"{folder} holds {kind or 'no lape result'}, not neuron sets or regions: give "
                            "RUN/neurons, a key-neuron sets folder or RUN/regions")
    return sets


def with_random_controls(sets: Mapping[str, NeuronSets], seed: int) -> dict[str, NeuronSets]:
    """``sets`` plus, for the first, a random set of the same count per layer per label (named
    ``random``, so its labels read ``random:LABEL``: the report's control rows)."""
    from ..neurons.select import random_like

    sets = dict(sets)
    first = next(iter(sets.values()))
    return {**sets, CONTROL_PREFIX.rstrip(":"): random_like(first, seed)}


def explain_sets(model: nn.Module, tokenizer: Any, corpus: Mapping[str, Iterable[Any]],
                 sets: Mapping[str, NeuronSets], config: ExplainConfig = ExplainConfig(), *,
                 extra: Sequence[Sequence[int]] = (), random_control: int | None = None,
                 out: str | Path | None = None, progress: bool = True) -> NeuronCards:
    """Cards for every neuron of ``sets`` (and ``extra``), and ``out/index.html`` + ``out/cards.json``.

    Args:
        sets: ``{name: NeuronSets}`` (see :func:`~lape.explain.cards.neuron_table` for the labels).
        random_control: a seed: add a random control of the first set (``random:LABEL``).
    """
    if random_control is not None:
        sets = with_random_controls(sets, random_control)
    neurons, memberships = neuron_table(sets, extra)
    cards = explain(model, corpus, neurons, config, memberships=memberships, out=out, progress=progress)
    if out is not None and dist_info()[0] == 0:
        write_page(cards, tokenizer, out)
    return cards
