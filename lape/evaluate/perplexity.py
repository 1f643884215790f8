"""Perplexity per language, and the deactivation matrix of Tang et al. (`ppl.py`).

Loss is computed from the base model's last hidden state one chunk of positions at a time, so
at most ``chunk_size x vocabulary`` logits exist at once (Gemma 3's vocabulary has 262k entries:
a 4 x 512 batch of full logits would take 2 GB). The head is rebuilt by :mod:`lape.head` (checked
once per model against ``model(...).logits``; the tests check chunked == unchunked on every
architecture family).

:func:`ppl_matrix` evaluates every language on its ``valid`` split unmodified and with each
language's neurons deactivated (rows: deactivated language, columns: evaluated language), and
the same for random neuron sets with as many neurons per layer (``random_draws`` seeded draws,
so their spread is known). The released code
prints mean NLL while calling it PPL; here both are stored and labelled: ``nll`` (nats/token),
``ppl = exp(nll)``, ``delta_nll`` and ``delta_ppl`` against the unmodified model.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import artifacts
from ..config import StageConfig, option
from ..corpora import batches
from ..corpora.identity import check_corpus, corpus_key
from ..errors import LapeError
from ..fingerprint import fingerprint
from ..head import next_token_targets, token_nll
from ..intervene import intervene
from ..masks import NeuronSets
from ..models import check_positions, input_device
from ..neurons.select import random_like
from ..space import NeuronSpace

logger = logging.getLogger(__name__)
RANDOM_BASELINES = ("full", "diagonal", "none")


@dataclass(frozen=True)
class PerplexityConfig(StageConfig):
    """Settings of :func:`ppl_matrix`."""

    tokens_per_language: int = option(4096, gt=0)  # valid tokens per language; Tang et al. use up to 2^20 on GPU
    seq_len: int = option(512, min=2, max=1 << 16)  # packed sequence length
    batch_size: int = option(4, min=1, max=4096)  # sequences per forward pass
    chunk_size: int = option(512, min=1, key=False)  # positions whose vocabulary logits exist at once
    seed: int = option(0, min=0)  # corpus shuffling and the random baseline
    split: str = "valid"  # held-out split
    random_baseline: str = option("full", choices=RANDOM_BASELINES)  # full: the random set's whole row;
    # diagonal: only its own language (a third of the cost for a square matrix); none
    random_draws: int = option(3, min=1, max=100)  # random sets per row (seeds seed, seed+1, ...): their spread


def sequence_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 chunk_size: int = 512) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens of a batch.

    Position ``t`` predicts token ``t+1``; a target counts when both positions are real tokens.
    Only ``chunk_size`` positions' logits exist at a time.

    Args:
        input_ids, attention_mask: ``[B, T]``.

    Returns:
        ``(nll_sum, n_tokens)``.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state  # (B, T, H)
    h, targets, _ = next_token_targets(hidden, input_ids, attention_mask)
    return float(token_nll(model, h, targets, chunk_size).sum()), int(h.shape[0])


def corpus_nll(model: nn.Module, sequences: Iterable[Any], config: PerplexityConfig) -> tuple[float, int]:
    """Mean NLL (nats/token) and token count over a language's sequences."""
    device = input_device(model)
    total, n = 0.0, 0
    with torch.inference_mode():
        for ids, mask in batches(sequences, config.batch_size):
            s, c = sequence_nll(model, ids.to(device), mask.to(device), config.chunk_size)
            total, n = total + s, n + c
    return (total / n if n else float("nan")), n


class LanguageNLL:
    """Evaluate the languages of a held-out corpus one at a time, under whatever edit is active,
    with one progress bar over all evaluations; remembers each language's token count.

    Example:
        >>> evaluate = LanguageNLL(model, valid, config, total=2 * len(valid), desc="perplexity")
        >>> base = [evaluate(lang) for lang in valid]
        >>> evaluate.close(); evaluate.tokens
    """

    def __init__(self, model: nn.Module, corpus: Mapping[str, Iterable[Any]], config: PerplexityConfig, *,
                 total: int, desc: str, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self.model, self.corpus, self.config = model, corpus, config
        self.tokens: dict[str, int] = {}
        self.bar = tqdm(total=total, desc=desc, unit="eval", disable=not progress)

    def __call__(self, lang: str) -> float:
        """Mean NLL (nats/token) of one language."""
        nll, self.tokens[lang] = corpus_nll(self.model, self.corpus[lang], self.config)
        self.bar.update(1)
        return nll

    def close(self) -> None:
        self.bar.close()


@dataclass
class PerplexityResult(artifacts.Artifact):
    """Mean NLL per evaluated language, unmodified and under each deactivation.

    Attributes:
        rows: labels whose neurons were deactivated (row order).
        languages: evaluated languages (column order).
        base_nll: ``[languages]`` nats/token of the unmodified model.
        nll: ``[rows][languages]`` with the row's neurons deactivated.
        random_nll: the same for the random control sets, averaged over the draws (NaN where
            not evaluated).
        tokens: evaluated tokens per language.
        random_draws_nll: ``[draws][rows][languages]``: each random draw's matrix.
    """

    rows: list[str]
    languages: list[str]
    base_nll: list[float]
    nll: list[list[float]]
    random_nll: list[list[float]]
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)
    random_draws_nll: list[list[list[float]]] = field(default_factory=list)

    KIND: ClassVar[str] = "ppl"

    @staticmethod
    def _delta(m: list[list[float]], base: list[float], ppl: bool) -> list[list[float]]:
        f = math.exp if ppl else (lambda x: x)
        return [[f(v) - f(b) for v, b in zip(row, base)] for row in m]

    @property
    def base_ppl(self) -> list[float]:
        return [math.exp(v) for v in self.base_nll]

    def delta_nll(self, random: bool = False) -> list[list[float]]:
        return self._delta(self.random_nll if random else self.nll, self.base_nll, False)

    def delta_ppl(self, random: bool = False) -> list[list[float]]:
        """PPL change, ``exp(nll) - exp(base_nll)``: the paper's heatmap."""
        return self._delta(self.random_nll if random else self.nll, self.base_nll, True)

    def row_language(self, row: str) -> str | None:
        """The evaluated language a row belongs to (its own column), or None for a control row."""
        return row if row in self.languages else None

    def diagonal_summary(self, metric: str = "ppl") -> list[dict[str, Any]]:
        """The row test. Per deactivated row that belongs to an evaluated language: its own
        change, the mean change of the other evaluated languages, the random set's own change,
        and two tests: ``own_above_off_diagonal`` (own change > that mean) and ``own_hit_hardest``
        (own change is the largest of the row). ``metric``: ``"ppl"`` (PPL change, the paper's
        heatmap; keys ``*_delta_ppl``) or ``"nll"`` (nats/token; keys ``*_delta_nll``), which
        can rank a row differently because the columns start from different perplexities."""
        d, dr = ((self.delta_ppl(), self.delta_ppl(random=True)) if metric == "ppl"
                 else (self.delta_nll(), self.delta_nll(random=True)))
        draws = [self._delta(m, self.base_nll, metric == "ppl") for m in self.random_draws_nll]
        out = []
        for i, row in enumerate(self.rows):
            lang = self.row_language(row)
            if lang is None:
                continue
            j = self.languages.index(lang)
            off = [v for k, v in enumerate(d[i]) if k != j]
            mean_off = sum(off) / max(len(off), 1)
            own_random = [m[i][j] for m in draws if not math.isnan(m[i][j])]
            out.append({"row": row, "language": lang, f"own_delta_{metric}": d[i][j],
                        f"off_diagonal_mean_delta_{metric}": mean_off, f"random_own_delta_{metric}": dr[i][j],
                        f"random_own_delta_{metric}_sd": statistics.stdev(own_random) if len(own_random) > 1 else math.nan,
                        f"random_own_delta_{metric}_max": max(own_random, default=math.nan),
                        "random_draws": len(own_random),
                        "own_above_every_random": bool(own_random) and all(d[i][j] > v for v in own_random),
                        "own_above_off_diagonal": d[i][j] > mean_off,
                        "own_hit_hardest": all(d[i][j] > v for v in off)})
        return out

    def column_summary(self) -> list[dict[str, Any]]:
        """The column test. Per evaluated language that has its own row: is that row's change
        the largest of the column, among the rows of languages (control rows left out)? Within
        a column PPL and NLL rank alike, so the test is the same in either; the figures are
        delta NLL (nats/token)."""
        d = self.delta_nll()
        own = {self.row_language(row): i for i, row in enumerate(self.rows) if self.row_language(row) is not None}
        out = []
        for j, lang in enumerate(self.languages):
            if lang not in own:
                continue
            i = own[lang]
            others = [(self.rows[k], d[k][j]) for k in own.values() if k != i]
            worst = max(others, key=lambda kv: kv[1], default=(None, math.nan))
            out.append({"language": lang, "own_row": self.rows[i], "own_delta_nll": d[i][j],
                        "largest_other_row": worst[0], "largest_other_delta_nll": worst[1],
                        "own_hit_hardest": all(d[i][j] > v for _, v in others)})
        return out

    def summary_line(self) -> str:
        """One line that says exactly what it counts."""
        d = self.diagonal_summary()
        hardest = sum(r["own_hit_hardest"] for r in d)
        above = sum(r["own_above_off_diagonal"] for r in d)
        c = self.column_summary()
        columns = sum(r["own_hit_hardest"] for r in c)
        line = (f"own language's PPL rises most of its row in {hardest} of {len(d)} rows "
                f"(more than the row's mean over other languages in {above} of {len(d)}); "
                f"each language is hurt most by its own row in {columns} of {len(c)} columns")
        with_random = [r for r in d if r["random_draws"]]
        if with_random:
            line += (f"; own change above every one of {with_random[0]['random_draws']} random draws in "
                     f"{sum(r['own_above_every_random'] for r in with_random)} of {len(with_random)} rows")
        return line

    def payload(self) -> dict[str, Any]:
        return {"rows": self.rows, "languages": self.languages, "base_nll": self.base_nll,
                "nll": self.nll, "random_nll": self.random_nll, "random_draws_nll": self.random_draws_nll,
                "tokens": self.tokens,
                "base_ppl": self.base_ppl, "delta_nll": self.delta_nll(), "delta_ppl": self.delta_ppl(),
                "random_delta_nll": self.delta_nll(True), "random_delta_ppl": self.delta_ppl(True),
                "diagonal": self.diagonal_summary(), "columns": self.column_summary()}

    to_dict = payload

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        d = self.payload()
        out = {name: [{"deactivated": r, **dict(zip(self.languages, vals))} for r, vals in zip(self.rows, d[name])]
               for name in ("nll", "delta_nll", "delta_ppl", "random_delta_ppl", "random_nll")}
        out["diagonal"] = d["diagonal"]
        out["diagonal_nll"] = self.diagonal_summary("nll")
        out["columns"] = d["columns"]
        return out

    @classmethod
    def _from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], r: Any) -> PerplexityResult:
        def matrix(m: list[list[float | None]]) -> list[list[float]]:  # null: not evaluated
            return [[math.nan if v is None else float(v) for v in row] for row in m]

        return cls(list(r["rows"]), list(r["languages"]), [math.nan if v is None else float(v) for v in r["base_nll"]],
                   matrix(r["nll"]), matrix(r["random_nll"]), dict(r["tokens"]), meta,
                   [matrix(m) for m in r.get("random_draws_nll") or []])

    def validate(self) -> None:
        shape = (len(self.rows), len(self.languages))
        for name, m in (("nll", self.nll), ("random_nll", self.random_nll), *(
                ("random_draws_nll", d) for d in self.random_draws_nll)):
            if len(m) != shape[0] or any(len(row) != shape[1] for row in m):
                raise LapeError(f"perplexity matrix {name} is not {shape[0]} x {shape[1]}: the artifact "
                                          "was edited or damaged; re-run lape ppl")
        values = [v for m in (self.nll, self.random_nll, *self.random_draws_nll) for row in m for v in row]
        values += list(self.base_nll)
        if any(v < 0 for v in values if not math.isnan(v)) or len(self.base_nll) != shape[1]:
            raise LapeError("perplexity result holds negative NLL or a wrong base row: the artifact was "
                                      "edited or damaged; re-run lape ppl")


def ppl_matrix(
    model: nn.Module,
    corpus: Mapping[str, Iterable[Any]],
    sets: NeuronSets,
    config: PerplexityConfig = PerplexityConfig(),
    *,
    rows: Iterable[str] | None = None,
    out: str | Path | None = None,
    space: NeuronSpace | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of every language, unmodified and with each row's neurons deactivated.

    Args:
        model: the model the neuron sets were made for.
        corpus: ``{language: sequences}`` of the held-out split (see :func:`lape.load_corpus`).
        sets: neuron sets; each label in ``rows`` gives one row.
        config: evaluation settings.
        rows: which sets to deactivate (default all labels). Per ``config.random_baseline``
            each row also deactivates ``config.random_draws`` random sets of equal size per layer (seeded) on every
            language (``full``), on the row's own language only (``diagonal``; NaN elsewhere)
            or not at all (``none``).
        out: a folder to save the result into; a result there made from the same model,
            text, neuron sets and settings is returned without recomputation.

    Returns:
        :class:`PerplexityResult`.
    """
    space = space or NeuronSpace.of(model)
    sets.check_model(model, space)
    check_positions(model, max([getattr(s, "seq_len", 0) for s in corpus.values()], default=0))
    check_corpus(corpus)
    languages = list(corpus)
    rows = list(rows) if rows is not None else list(sets.labels)
    for row in rows:
        sets.mask(row)  # an unknown row fails here, before any work
    inputs = {"corpus": {lang: corpus_key(corpus[lang]) for lang in languages}, "neurons": sets.identity(),
              "rows": rows}
    fp = fingerprint(model)
    key = artifacts.stage_key(PerplexityResult.KIND, model_fingerprint=fp, config=config.key_dict(), inputs=inputs)

    def compute() -> PerplexityResult:
        mode = config.random_baseline
        draws = [random_like(sets, seed=config.seed + k) for k in range(config.random_draws)] if mode != "none" else []
        # the languages each row's random set is evaluated on
        random_cols = {row: [lang for lang in languages if mode == "full" or (mode == "diagonal" and lang == row)]
                       for row in rows}
        n_evals = len(languages) * (1 + len(rows)) + len(draws) * sum(len(c) for c in random_cols.values())
        evaluate = LanguageNLL(model, corpus, config, total=n_evals, desc="perplexity", progress=progress)
        base = [evaluate(lang) for lang in languages]
        nll: list[list[float]] = []
        per_draw: list[list[list[float]]] = [[] for _ in draws]
        for row in rows:
            with intervene(model, sets, deactivate=[row], space=space):
                nll.append([evaluate(lang) for lang in languages])
            for randoms, matrix in zip(draws, per_draw):
                random_row = {lang: float("nan") for lang in languages}
                if random_cols[row]:  # empty when the row's language is not evaluated
                    with intervene(model, randoms, deactivate=[row], space=space):
                        random_row.update({lang: evaluate(lang) for lang in random_cols[row]})
                matrix.append([random_row[lang] for lang in languages])
        evaluate.close()
        nan_row = [float("nan")] * len(languages)
        rnd = [[statistics.fmean(m[i][j] for m in per_draw) if per_draw else float("nan")
                for j in range(len(languages))] for i in range(len(rows))] if per_draw else [nan_row[:] for _ in rows]
        tokens = evaluate.tokens
        meta = artifacts.model_sidecar(
            PerplexityResult.KIND, model, space, languages=languages, token_counts=tokens, config=config.to_dict(),
            inputs=inputs, neurons={"method": sets.meta.get("method"), "counts": sets.counts()},
            random_seeds=[config.seed + k for k in range(len(draws))])
        return PerplexityResult(rows, languages, base, nll, rnd, tokens, meta, per_draw)

    return artifacts.run_stage(PerplexityResult, out, key, compute, model=model)
