"""The interactive steering loop of ``lape steer --interactive``.

Each prompt is answered with the unsteered and the steered continuation, the rule in force
(the calibrated steering profile's or the plain settings'), how many neurons it edits in which
layers, the identified language, distinct-2, the share of non-letter characters and, when a
fluency reference is given, each output's perplexity relative to real text of the language.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .steering import Steerer, check_languages, source_language

if TYPE_CHECKING:
    from .fluency import FluencyReference

HELP = """commands:
  :to LANG        switch the target language (e.g. :to ja)
  :from LANG      switch the source language whose neurons are scaled down (:from none keeps them)
  :strength X     override the rule's strength (e.g. :strength 2); :strength rule  goes back to the rule's
  :profile        switch between the calibrated steering profile and the plain settings
  :off            show only the unsteered output;  :on  steer again
  :langs          list the languages
  :help           this text;  :quit  leave
anything else is a prompt."""


def repl(steerer: Steerer, target: str | None = None, source: str | None = "en",
         input_fn: Callable[[str], str] = input, output_fn: Callable[[str], None] = print,
         reference: FluencyReference | None = None) -> int:
    """Read prompts and ``:commands`` from ``input_fn`` until ``:quit`` or end of input."""
    labels = steerer.sets.labels
    check_languages(steerer.sets, [target] if target is not None else [], None)
    if source not in labels:  # e.g. no English set: steer by activation only
        source = None
    default_target = next((lab for lab in labels if lab != source), labels[0])
    state: dict[str, Any] = {"to": target or default_target, "from": source, "strength": None, "on": True}

    def settings() -> str:
        where = "profile" if steerer.use_profile and steerer.profile is not None else "plain settings"
        return f"{steerer.rule_for(state['to']).describe()} ({where})"

    output_fn(f"lape steering REPL: target {state['to']}, source {state['from']}, {settings()}. :help for commands.")
    while True:
        strength = "" if state["strength"] is None else f" x{state['strength']:g}"
        try:
            line = input_fn(f"[{state['to'] if state['on'] else 'off'}{strength}]> ").strip()
        except EOFError:
            return 0
        if not line:
            continue
        if not line.startswith(":"):
            if state["on"]:
                output_fn(steerer.steer(line, to=state["to"], source=state["from"], strength=state["strength"],
                                        reference=reference).format())
            else:
                g = steerer.generate([line])[0]
                output_fn(f"unsteered  [{g.shown_language}] {g.text.strip()!r}")
            continue
        cmd, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if cmd in ("quit", "q", "exit"):
            return 0
        if cmd == "help":
            output_fn(HELP)
        elif cmd == "langs":
            output_fn(" ".join(labels))
        elif cmd == "to" and arg in labels:
            state["to"], state["on"] = arg, True
            output_fn(f"target -> {arg}: {settings()}")
        elif cmd == "from" and (arg in labels or source_language(arg) is None):
            state["from"] = source_language(arg)
            output_fn(f"source -> {arg}")
        elif cmd == "strength" and arg == "rule":
            state["strength"] = None
            output_fn(f"strength -> the rule's: {settings()}")
        elif cmd == "strength":
            try:
                value = float(arg)
                steerer.config.replace(strength=value)  # the same bounds as --strength
                state["strength"] = value
                output_fn(f"strength -> {value:g}")
            except ValueError:
                output_fn(f"not a number: {arg!r} (e.g. :strength 2)")
            except Exception as e:  # a LapeError naming the bound
                output_fn(str(e))
        elif cmd == "profile":
            if steerer.profile is None:
                output_fn("no steering profile for these neuron sets: run lape steer-calibrate first")
            else:
                steerer.use_profile = not steerer.use_profile
                output_fn(f"now using {settings()}")
        elif cmd in ("off", "on"):
            state["on"] = cmd == "on"
            output_fn(f"steering {cmd}")
        elif cmd in ("to", "from"):
            output_fn(f"unknown language {arg!r}: choose one of {' '.join(labels)}")
        else:
            output_fn(f"unknown command :{cmd} (:help lists them)")
