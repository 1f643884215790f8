"""LAPE: language-specific neurons (Tang et al., ACL 2024).

:mod:`~lape.neurons.stats` records per-language firing statistics (:func:`record`),
:mod:`~lape.neurons.select` selects the neurons by activation-probability entropy
(:func:`identify`), :mod:`~lape.neurons.run` chains them with the perplexity and steering
evaluations (:mod:`lape.evaluate`) into ``lape demo``'s first stages, and
:mod:`~lape.neurons.report` holds their report sections.
"""

from .select import IdentifyConfig, identify, language_agnostic, random_like
from .stats import ActivationStats, RecordConfig, record

__all__ = ["ActivationStats", "IdentifyConfig", "RecordConfig", "identify", "language_agnostic", "random_like",
           "record"]
