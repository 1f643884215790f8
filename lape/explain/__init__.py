"""Neuron cards: what each chosen neuron fires on and what it writes.

* :func:`explain` -> :class:`NeuronCards` (running top-k contexts per language, firing figures,
  logit-lens written tokens, set membership), resumable and torchrun-sharded like ``record``;
* :func:`write_page` -> ``index.html`` (offline, sortable and filterable) and ``cards.json``;
* :func:`card` -> one card inline in a notebook;
* :func:`explain_summary` -> per language, are its neurons about that language?
"""

from .cards import ExplainConfig, NeuronCards, explain, neuron_table
from .inline import Card, card
from .lens import WrittenTokens, written_tokens
from .page import cards_json, render_card, write_page
from .summary import explain_summary

__all__ = ["Card", "ExplainConfig", "NeuronCards", "WrittenTokens", "card", "cards_json", "explain",
           "explain_summary", "neuron_table", "render_card", "write_page", "written_tokens"]
