"""One neuron card in a notebook: ``lape.explain.card(model, (17, 803), tokenizer=tok)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import LapeError
from .cards import ExplainConfig, NeuronCards, explain
from .page import CSS, card_data, card_texts, render_card


@dataclass
class Card:
    """One neuron's card: ``data`` as in ``cards.json``; shown inline by Jupyter (``_repr_html_``)."""

    data: dict[str, Any]

    def _repr_html_(self) -> str:
        return f"<style>{CSS}.card{{display:block}}</style>{render_card(self.data)}"

    def to_dict(self) -> dict[str, Any]:
        return self.data


def card(model: nn.Module, neuron: tuple[int, int], *, tokenizer: Any, cards: NeuronCards | str | Path | None = None,
         corpus: str = "builtin", languages: list[str] | None = None, config: ExplainConfig = ExplainConfig(),
         progress: bool = False) -> Card:
    """The card of ``neuron = (layer, index)``: from ``cards`` (an artifact or its folder) when it
    holds the neuron, else explained now over ``corpus`` (one pass over the token budget).

    Example:
        >>> model, tok = lape.load_model("builtin")
        >>> lape.explain.card(model, (17, 803), tokenizer=tok)   # renders in a notebook
    """
    if cards is not None and not isinstance(cards, NeuronCards):
        cards = NeuronCards.load(cards, model=model)
    if cards is not None:
        try:
            row = cards.row(neuron)
        except LapeError:
            cards = None
    if cards is None:
        from ..corpora import load_corpus

        streams = load_corpus(corpus, tokenizer, split=config.split, tokens_per_language=config.tokens_per_language,
                              seq_len=config.seq_len, seed=config.seed, languages=languages)
        cards = explain(model, streams, [list(neuron)], config, memberships={"listed": [0]}, progress=progress)
        row = 0
    return Card(card_data(cards, row, card_texts(cards, tokenizer, row)))
