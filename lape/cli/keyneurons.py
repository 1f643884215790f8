"""``lape keyneurons ...``: Chen et al.'s key neurons (NA-ICA / QRNCA).

``attribute`` (integrated gradients on multiple-choice questions, the selection half),
``select`` (NA, inverse cluster attribution, common neurons -> neuron sets per cluster, with
plots), ``eval`` (boost/suppress on the held-out half: PCR, editing success, cluster
prediction, against random sets and plain NA) and ``compare`` (the three methods' sets on one
neuron space).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..errors import LapeError
from . import common
from .common import logger
from .evaluate import positive_number


def add_question_args(p: argparse.ArgumentParser) -> None:
    """``--questions``, ``--clusters``, ``--per-cluster``, ``--eval-share``: the same on every step,
    so that attribution and evaluation see the two halves of one split."""
    p.add_argument("--questions", default="builtin:domains",
                   help="builtin:domains (MMLU), builtin:languages (cloze), builtin (both) or a question manifest")
    p.add_argument("--clusters", nargs="+", default=None, help="keep these clusters only (default: all)")
    p.add_argument("--per-cluster", type=positive_number, default=None,
                   help="questions per cluster (default: all)")
    p.add_argument("--eval-share", type=float, default=0.5,
                   help="share of each cluster's questions held out for lape keyneurons eval (default 0.5)")


def questions_half(args: argparse.Namespace, half: str) -> list:
    """The selection (``"select"``) or evaluation (``"eval"``) half of the questions."""
    from ..keyneurons.questions import load_questions, split_questions

    if not 0.0 < args.eval_share < 1.0:
        raise LapeError(f"--eval-share {args.eval_share} must be between 0 and 1 (exclusive): e.g. 0.5")
    questions = load_questions(args.questions, clusters=args.clusters, per_cluster=args.per_cluster)
    selection, evaluation = split_questions(questions, args.eval_share)
    return selection if half == "select" else evaluation


def custom_templates(args: argparse.Namespace):
    """A question manifest's own templates (``None`` for the built-in question sets)."""
    from ..keyneurons.questions import question_templates

    return None if str(args.questions).startswith("builtin") else question_templates(args.questions)


def cmd_attribute(args: argparse.Namespace) -> int:
    from ..keyneurons.attribute import AttributeConfig, attribute

    config = config_from_args(AttributeConfig, args)
    out = common.out_folder(args.out)
    questions = questions_half(args, "select")  # checked before the model loads
    common.init_distributed(args)
    model, tok = common.load(args)
    scores = attribute(model, tok, questions, config, out=out, templates=custom_templates(args),
                       progress=not args.quiet)
    comp = scores.meta.get("completeness", {})
    rho = (scores.meta.get("ranking_check") or {}).get("median_spearman") or {}
    logger.info("attributed %d prompts of %d questions in %d clusters: %s; completeness: median relative gap %.2g "
                "(%s); top-K vs exact ablation: median Spearman %.2f -> %s", scores.meta.get("prompts", 0),
                len(questions), len(scores.clusters), scores.meta.get("method"),
                comp.get("median_rel_delta", float("nan")), "holds" if comp.get("holds") else "FAILS",
                rho.get("value", float("nan")), args.out)
    common.finish_distributed()
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from ..keyneurons.attribute import KeyNeuronScores
    from ..keyneurons.select import SelectConfig, select
    from ..plots import accumulated_heatmap
    from ..report import save_figure, save_neuron_plots

    config = config_from_args(SelectConfig, args)
    scores = KeyNeuronScores.load(args.scores)
    out = common.out_folder(args.out)
    sets, maps = select(scores, config, out=out)
    plots = Path(args.plots) if args.plots else out.parent / f"{out.name}-plots"
    save_neuron_plots(out, out=plots)
    save_figure(accumulated_heatmap(maps.clusters, maps.accumulated), plots / "accumulated_heatmap")
    per_q = sets.meta.get("key_neurons_per_question", {})
    logger.info("key neurons per cluster: %s; per question: %s; %d common neurons excluded -> %s (plots in %s)",
                ", ".join(f"{c} {n}" for c, n in sets.counts().items()),
                ", ".join(f"{c} {v:.1f}" for c, v in per_q.items()), sets.meta.get("common_neurons", 0), out, plots)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .. import artifacts
    from ..keyneurons.attribute import KeyNeuronScores
    from ..keyneurons.evaluate import KeyEvalConfig, evaluate_key_neurons
    from ..keyneurons.questions import held_out_inputs
    from ..keyneurons.select import KeyNeuronMaps, plain_na_sets
    from ..masks import NeuronSets

    config = config_from_args(KeyEvalConfig, args)
    sets = NeuronSets.load(args.neurons)
    out = common.out_folder(args.out)
    questions = questions_half(args, "eval")
    used = KeyNeuronMaps.load(args.neurons).uids if artifacts.exists(args.neurons, KeyNeuronMaps.KIND) else None
    selection = held_out_inputs(sets, questions, questions_half(args, "select"), used)
    if selection is None:
        logger.info("the selection questions are not all known here: the activation baselines use the evaluation "
                    "questions' own activations")
    na_sets = plain_na_sets(KeyNeuronScores.load(args.scores), sets) if args.scores else None
    model, tok = common.load(args)
    ev = evaluate_key_neurons(model, tok, sets, questions, config, na_sets=na_sets, selection=selection, out=out,
                              templates=custom_templates(args), progress=not args.quiet)
    answers = ev.summary["answers"][0]
    logger.info("%d evaluation questions (%d prompts); 95%% intervals over questions (%d resamples)",
                answers.get("questions", ev.meta.get("questions", 0)), answers["prompts"], config.resamples)
    for text in ev.family_rows():
        logger.info("%-10s %-8s PCR %s  pooled %s  related %s  unrelated %s  dlogP related %s  unrelated %s  "
                    "edit success %s", *text[:2], *text[3:])
    for text in ev.prediction_rows():
        logger.info("cluster prediction %-20s accuracy %s (chance %s)", *text)
    for v in ev.verdicts():
        logger.info("%s", v["sentence"])
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..corpora import load_manifest
    from ..keyneurons.run import KeyNeuronsRunConfig, method_comparison
    from ..masks import NeuronSets, ParamRegions

    config = config_from_args(KeyNeuronsRunConfig, args)
    lape_sets, key_sets = NeuronSets.load(args.neurons), NeuronSets.load(args.keyneurons)
    regions = ParamRegions.load(args.regions) if args.regions else None
    manifest = load_manifest(args.corpus)
    out = common.out_folder(args.out)
    model, tok = common.load(args)
    for what in (lape_sets, key_sets, *([regions] if regions is not None else [])):
        what.check_model(model)
    res = method_comparison(model, tok, lape_sets, key_sets, regions, manifest, out, config, progress=not args.quiet)
    for r in res.overlap:
        logger.info("%-3s %-11s x %-11s overlap %4d (chance %6.2f, x%.1f)", r["language"], r["a"], r["b"], r["overlap"],
                    r["chance"], r["enrichment"])
    for r in res.effect:
        logger.info("%-11s %-3s own dNLL %+.3f, others %+.3f", r["family"], r["language"], r["own_delta_nll"],
                    r["others_delta_nll"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..keyneurons.attribute import AttributeConfig
    from ..keyneurons.evaluate import KeyEvalConfig
    from ..keyneurons.run import KeyNeuronsRunConfig
    from ..keyneurons.select import SelectConfig

    group = sub.add_parser("keyneurons", help="key neurons (Chen et al. 2024, NA-ICA): attribute, select, eval")
    ksub = group.add_subparsers(dest="keyneurons_command", required=True, metavar="STEP", parser_class=common.Parser)

    s = ksub.add_parser("attribute", help="integrated gradients of the answer letter on the selection half")
    common.add_model_args(s)
    add_question_args(s)
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/kn-scores")
    add_config_args(s, AttributeConfig)
    s.set_defaults(fn=cmd_attribute)

    s = ksub.add_parser("select", help="NA-ICA key neurons per cluster (neuron sets) and their plots")
    s.add_argument("scores", help="folder written by lape keyneurons attribute")
    s.add_argument("--out", required=True, help="output folder for the neuron sets, e.g. runs/x/keyneurons")
    s.add_argument("--plots", default=None, help="plot folder (default: OUT-plots beside --out)")
    add_config_args(s, SelectConfig)
    s.set_defaults(fn=cmd_select)

    s = ksub.add_parser("eval", help="boost/suppress key neurons on the held-out half: PCR, editing, prediction")
    s.add_argument("neurons", help="folder written by lape keyneurons select")
    common.add_model_args(s)
    add_question_args(s)
    s.add_argument("--scores", default=None, help="the attribution folder: adds the plain-NA (no ICA) baseline")
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/kn-eval")
    add_config_args(s, KeyEvalConfig)
    s.set_defaults(fn=cmd_eval)

    s = ksub.add_parser("compare", help="LAPE neurons vs key neurons vs region neurons: overlap and perplexity effect")
    s.add_argument("--neurons", required=True, help="LAPE neuron sets (lape identify)")
    s.add_argument("--keyneurons", required=True, help="key neurons of language clusters (lape keyneurons select)")
    s.add_argument("--regions", default=None, help="regions with monolingual regions (lape regions select)")
    s.add_argument("--corpus", default="builtin", help="held-out text for the perplexity effect")
    common.add_model_args(s)
    s.add_argument("--out", required=True, help="output folder, e.g. runs/x/method-comparison")
    add_config_args(s, KeyNeuronsRunConfig, skip=("questions", "clusters", "per_cluster", "eval_share", "steps",
                                                  "templates", "random_seeds"))
    s.set_defaults(fn=cmd_compare)
