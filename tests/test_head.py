"""The rebuilt head is checked once per model against ``model(...).logits``: a model that scales
its logits another way (Cohere's ``logit_scale``) is refused instead of given a wrong NLL."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny_models import random_ids, tiny_model

from lape.errors import LapeError
from lape.evaluate.perplexity import sequence_nll
from lape.head import logits_from_hidden


def _cohere():
    torch.manual_seed(0)
    config = T.CohereConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, logit_scale=0.0625,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return T.AutoModelForCausalLM.from_config(config).eval()


def test_a_model_with_another_logit_scale_is_refused():
    model = _cohere()
    ids = random_ids(1, 8)
    with pytest.raises(LapeError, match="computes its logits in a way lape does not rebuild") as err:
        sequence_nll(model, ids, torch.ones_like(ids))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_supported_heads_pass_and_are_checked_once(family):
    model = tiny_model(family)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))  # the full model's forward
    try:
        hidden = model.base_model(input_ids=random_ids(1, 5)).last_hidden_state
        first = logits_from_hidden(model, hidden)
        again = logits_from_hidden(model, hidden)
    finally:
        handle.remove()
    assert calls == [1]  # one check, on the first call only
    torch.testing.assert_close(first, model(input_ids=random_ids(1, 5)).logits)
    assert torch.equal(first, again)
