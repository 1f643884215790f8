"""Evaluations of neuron sets (and, later, parameter regions): perplexity under deactivation
(:mod:`.perplexity`) and output-language steering during generation (:mod:`.steering`)."""
