"""lape: find, measure and steer the language-specific parts of large language models.

Three published methods on one neuron space ``(layer, index of an MLP activation)``:
LAPE (Tang et al., ACL 2024), linguistic regions (Zhang et al., ACL 2024) and key neurons
(Chen et al., 2024). The pipeline: corpus -> activation statistics -> neuron sets ->
interventions -> evaluations -> plots and report.

Example:
    >>> import lape
    >>> model, tok = lape.load_model("builtin")
    >>> corpus = lape.load_corpus("builtin", tok, languages=["en", "fr", "ja"])
    >>> stats = lape.record(model, corpus)
    >>> sets = lape.identify(stats)
    >>> with lape.intervene(model, sets, deactivate=["en"], activate=["fr"], stats=stats):
    ...     ...
"""

from .artifacts import load
from .errors import LapeError
from .evaluate.perplexity import PerplexityConfig, PerplexityResult, ppl_matrix
from .fingerprint import fingerprint
from .intervene import Edit, intervene
from .masks import NeuronSets, ParamRegions
from .models import load_model, load_tokenizer
from .neurons.select import IdentifyConfig, identify, language_agnostic, random_like
from .neurons.stats import ActivationStats, RecordConfig, record
from .space import NeuronSpace
from .version import __version__


def __getattr__(name: str):
    # corpora, plots, steering and report import heavier pieces (datasets, matplotlib) lazily
    import importlib

    if name in {"load_corpus", "load_manifest"}:
        return getattr(importlib.import_module(".corpora", __name__), name)
    if name in {"corpora", "plots", "report", "pipeline", "prompts", "weights", "runningstats", "regions",
                "keyneurons", "explain"}:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


__all__ = [
    "__version__",
    "ActivationStats", "Edit", "IdentifyConfig", "LapeError", "NeuronSets", "NeuronSpace", "ParamRegions",
    "PerplexityConfig", "PerplexityResult", "RecordConfig", "fingerprint", "identify", "intervene",
    "language_agnostic", "load", "load_corpus", "load_manifest", "load_model", "load_tokenizer", "ppl_matrix",
    "random_like", "record",
]
