"""Fluency of generated text, beyond distinct-2.

* :func:`non_letter_share`: the share of non-blank characters that are neither letters nor
  combining marks (Unicode categories ``L*`` and ``M*``): markup (``<b><i>"</i></b>``),
  punctuation runs and digits. Natural prose sits near 0.02-0.05.
* :func:`text_nll`: the mean next-token NLL of each text's tokens under the model *as it is*
  (call it outside any intervention: the unmodified model), each text read from BOS on, so a
  steered output and a window of real text are scored the same way.
* :func:`fluency_reference`: per language, the median and 90th percentile of the per-window
  NLL over windows of real held-out text with as many tokens as an output: the yardstick an
  output's NLL is compared with. ``fluency ratio = exp(output NLL - reference median NLL)`` is a
  perplexity ratio (1: as predictable as real text of that language; 10: ten times more
  perplexing); an output is **fluent** when its NLL is at most the 90th percentile of real
  text's (as predictable as 90% of real windows) and at most 30% of its characters are
  non-letters.

Only the scored positions' vocabulary logits are computed, ``chunk_size`` rows at a time.
"""

from __future__ import annotations

import logging
import math
import statistics
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..corpora import batches
from ..errors import LapeError
from ..head import next_token_targets, token_nll
from ..models import input_device

logger = logging.getLogger(__name__)
MAX_NON_LETTER = 0.3  # above this share of non-letter characters an output is markup, not prose


def non_letter_share(text: str) -> float:
    """Share of non-blank characters that are not letters or marks (0.0 for blank text)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(not unicodedata.category(c).startswith(("L", "M")) for c in chars) / len(chars)


def text_nll(model: nn.Module, token_lists: Sequence[Sequence[int]], bos_token_id: int | None,
             batch_size: int = 64, chunk_size: int = 1024) -> list[float]:
    """Mean NLL (nats/token) of each token list, read after BOS (when the tokenizer has one).

    Every token of a list is predicted (the first from BOS alone); an empty list gives NaN.
    """
    prefix = [] if bos_token_id is None else [int(bos_token_id)]
    out: list[float] = []
    device = input_device(model)
    for start in range(0, len(token_lists), batch_size):
        rows = [prefix + [int(t) for t in tokens] for tokens in token_lists[start:start + batch_size]]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        out += _batch_nll(model, ids.to(device), mask.to(device), chunk_size)
    return out


def _batch_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, chunk_size: int) -> list[float]:
    """Per-row mean NLL of a right-padded batch; position t predicts t+1 (the first token is
    context only)."""
    if ids.shape[1] < 2:
        return [math.nan] * ids.shape[0]
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        h, targets, rows = next_token_targets(hidden, ids, mask)
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
        total.index_add_(0, rows, token_nll(model, h, targets, chunk_size))
        count = torch.bincount(rows, minlength=ids.shape[0])
    return [float(t / c) if c else math.nan for t, c in zip(total.tolist(), count.tolist())]


def window_nlls(model: nn.Module, windows: Iterable, batch_size: int = 64, chunk_size: int = 1024) -> list[float]:
    """Per-window mean NLL of real text (packed sequences that start with BOS, e.g.
    ``load_corpus(..., split="valid", seq_len=max_new_tokens + 1)[lang]``)."""
    values: list[float] = []
    device = input_device(model)
    for ids, mask in batches(windows, batch_size):
        values += _batch_nll(model, ids.to(device), mask.to(device), chunk_size)
    return [v for v in values if not math.isnan(v)]


@dataclass
class FluencyReference(artifacts.Artifact):
    """Per language: ``median_nll``, ``p90_nll`` and ``windows`` of real held-out text windows
    (:func:`fluency_reference`), and the rule that calls an output fluent (:meth:`fluent`)."""

    languages: dict[str, dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "fluency_reference"
    DESCRIPTION: ClassVar[str] = "fluency reference"

    def payload(self) -> Any:
        return self.languages

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"reference": [{"language": k, **v} for k, v in self.languages.items()]}

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], payload: Any) -> FluencyReference:
        return cls({k: dict(v) for k, v in (payload or {}).items()}, meta)

    def validate(self) -> None:
        for lang, r in self.languages.items():
            if not all(isinstance(r.get(k), (int, float)) and r[k] >= 0 for k in ("median_nll", "p90_nll")):
                raise LapeError(f"fluency reference of {lang!r} has no valid NLL figures: the artifact was "
                                "edited or damaged; delete it to recompute")

    def require(self, languages: Iterable[str]) -> None:
        """Refuse languages without reference text (before any generation)."""
        missing = [x for x in languages if x not in self.languages]
        if missing:
            raise LapeError(f"no fluency reference for {', '.join(missing)}: its held-out text is missing; "
                            "give a corpus with a valid split for every target language")

    def ratio(self, lang: str, nll: float) -> float:
        """The output's perplexity over real text's median perplexity."""
        return fluency_ratio(nll, self.languages[lang]["median_nll"])

    def fluent(self, lang: str, nll: float, text: str) -> bool:
        """As predictable as 90% of real windows, and mostly letters."""
        return (math.isfinite(nll) and nll <= self.languages[lang]["p90_nll"]
                and non_letter_share(text) <= MAX_NON_LETTER)


def fluency_reference(model: nn.Module, windows: Mapping[str, Iterable], *, out: str | Path | None = None,
                      batch_size: int = 64) -> FluencyReference:
    """Median and 90th-percentile NLL of real text windows per language (see the module
    docstring). ``out`` caches it per language: a language whose windows (corpus key) and model
    are unchanged is read from there, the others are computed and added, so references for
    different target lists share one folder. Returns the requested languages only."""
    from ..corpora.identity import corpus_key

    keys = {lang: artifacts.content_hash(corpus_key(w)) for lang, w in windows.items()}
    saved: dict[str, dict[str, Any]] = {}
    if out is not None and artifacts.exists(out, FluencyReference.KIND):
        try:
            saved = dict(FluencyReference.load(out, model=model).languages)
        except LapeError as exc:
            logger.warning("recomputing the fluency reference in %s: %s", out, exc)
    missing = [lang for lang in windows if (saved.get(lang) or {}).get("key") != keys[lang]]
    for lang in missing:
        values = sorted(window_nlls(model, windows[lang], batch_size))
        if not values:
            raise LapeError(f"no held-out text windows for {lang!r}: the corpus has no valid split text for it")
        saved[lang] = {"median_nll": statistics.median(values),
                       "p90_nll": values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))],
                       "windows": len(values), "key": keys[lang]}
    if out is not None and missing:
        artifacts.save(out, FluencyReference(saved, artifacts.model_sidecar(FluencyReference.KIND, model,
                                                                           languages=list(saved))))
    elif out is not None:
        logger.info("fluency reference in %s is up to date for %s: skipped", out, ", ".join(windows))
    wanted = {lang: saved[lang] for lang in windows}
    return FluencyReference(wanted, artifacts.model_sidecar(FluencyReference.KIND, model, languages=list(wanted)))


def fluency_ratio(nll: float, reference_median_nll: float) -> float:
    """``exp(nll - reference)``: the output's perplexity over real text's median perplexity."""
    return math.exp(nll - reference_median_nll) if math.isfinite(nll) and math.isfinite(reference_median_nll) else math.nan
