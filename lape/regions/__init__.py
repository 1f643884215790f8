"""Linguistic regions (Zhang et al., ACL 2024): parameter importance, regions, and what they do.

* :mod:`.importance`: ``importance(model, corpus) -> ParamImportance``, the signed per-language
  ``theta * sum_b grad loss_b`` of every decoder-block parameter (step 1);
* :mod:`.select`: ``select_regions(imp) -> ParamRegions``, per-tensor core / bottom / random and
  monolingual regions (steps 2-3);
* :mod:`.ablate`: ``ablate_regions(model, valid, regions) -> RegionPerplexity``, perplexity per
  language with each region removed, with the row and column tests (step 4);
* :mod:`.dims`: massive-activation channels and where a region sits along the residual stream;
  :mod:`.perturb`: one weight x4 on a massive vs an ordinary channel (step 5);
* :mod:`.train`: further pre-training with a region frozen, and what the other languages
  forget (step 6);
* :mod:`.bridge`: LAPE neurons against the regions; :mod:`.run`: every step in order, cached
  (``lape demo`` and the README's full run); :mod:`.report`: the report's sections.

Importing this package registers the ``importance`` artifact kind, so that
:func:`lape.artifacts.load` can read it (the other kinds load their module on demand).

Example:
    >>> from lape.regions import ImportanceConfig, RegionConfig, importance, select_regions, ablate_regions
    >>> imp = importance(model, corpus, ImportanceConfig(), out="runs/demo/importance")
    >>> regions = select_regions(imp, RegionConfig(top_rate=0.01), out="runs/demo/regions")
    >>> ablate_regions(model, valid, regions, rows=["core", "random", "bottom"]).summary_line()
"""

from .ablate import AblateConfig, RegionPerplexity, ablate_regions
from .bridge import overlap_result, region_overlap
from .dims import DimsConfig, dimension_dependence, find_massive_dims, residual_axes, without_dims
from .importance import ImportanceConfig, ParamImportance, importance
from .perturb import PerturbConfig, perturb
from .select import RegionConfig, select_regions
from .train import TrainConfig, continued_pretraining

__all__ = ["AblateConfig", "DimsConfig", "ImportanceConfig", "ParamImportance", "PerturbConfig", "RegionConfig",
           "RegionPerplexity", "TrainConfig", "ablate_regions", "continued_pretraining", "dimension_dependence",
           "find_massive_dims", "importance", "overlap_result", "perturb", "region_overlap", "residual_axes",
           "select_regions", "without_dims"]
