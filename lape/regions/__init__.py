"""Linguistic regions (Zhang et al., ACL 2024): parameter importance, regions, and what they do.

* :mod:`.importance`: ``param_importance(model, corpus) -> ParamImportance``, the signed per-language
  ``(theta - r) * sum_b grad loss_b`` of every decoder-block parameter, ``r`` the value removal
  writes (0; -1 for ``x * (1 + w)`` norm weights) (step 1);
* :mod:`.select`: ``select_regions(imp) -> ParamRegions``, per-tensor core / bottom / random and
  monolingual regions (steps 2-3);
* :mod:`.ablate`: ``ablate_regions(model, valid, regions) -> RegionPerplexity``, perplexity per
  language with each region removed, with the row and column tests (step 4);
* :mod:`.stability`: ``split_half_stability(model, halves) -> RegionStability``, the Jaccard
  between the regions of two disjoint halves of the text, against its exact chance value;
* :mod:`.massive`: the residual stream's massive channels; :mod:`.dims`: where a region sits along it;
  :mod:`.perturb`: the super-weight test (Yu et al. 2024): per massive channel, the
  down-projection entry that writes it at the first token and the norm scale that sets it,
  zeroed and x4, against the median channel's (step 5);
* :mod:`.train`: further pre-training with a region frozen, beside random and magnitude-matched
  controls over several seeds; what the other languages forget, or perturbation damage where the
  trained language's own NLL did not fall (step 6);
* :mod:`.bridge`: LAPE neurons against the regions; :mod:`.run`: every step in order, cached
  (``lape demo`` and the README's full run); :mod:`.report`: the report's sections.

Importing this package registers the ``importance`` artifact kind, so that
:func:`lape.artifacts.load` can read it (the other kinds load their module on demand).

Example:
    >>> from lape.regions import ImportanceConfig, RegionConfig, param_importance, select_regions, ablate_regions
    >>> imp = param_importance(model, corpus, ImportanceConfig(), out="runs/demo/importance")
    >>> regions = select_regions(imp, RegionConfig(top_rate=0.01), out="runs/demo/regions")
    >>> ablate_regions(model, valid, regions, rows=["core", "random", "bottom"]).summary_line()
"""

from .ablate import AblateConfig, RegionPerplexity, ablate_regions
from .bridge import bridge_rows, region_bridge
from .dims import DimsConfig, region_dims
from .importance import ImportanceConfig, ParamImportance, param_importance
from .massive import find_massive_dims, residual_axes, without_dims
from .perturb import PerturbConfig, region_perturb
from .select import RegionConfig, select_regions
from .stability import (
    RegionStability,
    chance_jaccard,
    load_halves,
    region_agreement,
    split_half_stability,
)
from .train import TrainConfig, region_train

__all__ = ["AblateConfig", "DimsConfig", "ImportanceConfig", "ParamImportance", "PerturbConfig", "RegionConfig",
           "RegionPerplexity", "RegionStability", "TrainConfig", "ablate_regions", "chance_jaccard",
           "region_train", "region_dims", "find_massive_dims", "load_halves",
           "region_bridge", "param_importance", "region_agreement", "bridge_rows", "residual_axes", "select_regions",
           "split_half_stability", "region_perturb", "without_dims"]
