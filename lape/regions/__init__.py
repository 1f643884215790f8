"""Linguistic regions (Zhang et al., ACL 2024): parameter importance and region selection.

* :mod:`.importance`: ``importance(model, corpus) -> ParamImportance``, the signed per-language
  ``theta * sum_b grad loss_b`` of every decoder-block parameter (step 1);
* :mod:`.select`: ``select_regions(imp) -> ParamRegions``, per-tensor core / bottom / random and
  monolingual regions (steps 2-3).

Importing this package registers the ``importance`` artifact kind, so that
:func:`lape.artifacts.load` can read it.

Example:
    >>> from lape.regions import ImportanceConfig, RegionConfig, importance, select_regions
    >>> imp = importance(model, corpus, ImportanceConfig(), out="runs/demo/importance")
    >>> regions = select_regions(imp, RegionConfig(top_rate=0.01), out="runs/demo/regions")
    >>> regions.counts()["core"]
"""

from .importance import ImportanceConfig, ParamImportance, importance
from .select import RegionConfig, select_regions

__all__ = ["ImportanceConfig", "ParamImportance", "RegionConfig", "importance", "select_regions"]
