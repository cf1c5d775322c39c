"""Family adapters: block-by-block execution reproduces HF's output_hidden_states (no Ray)."""
from __future__ import annotations

import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.models import families

FAMILIES = ["gpt2", "gpt_neox", "llama", "bert"]
TEXTS = ["the cat sat on the mat", "a", "gromov wasserstein distances between the layers of a network"]


def _reference(path, family, side):
    import transformers as tf

    cls = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    model = cls.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path, padding_side=side)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    # Positions over real tokens, as gwray's extraction passes them (HF's default is arange).
    positions = (batch["attention_mask"].cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions,
                    output_hidden_states=True)
    return model, batch, out.hidden_states


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_block_by_block_equals_output_hidden_states(tiny_hf_model, family, side):
    path = tiny_hf_model(family, layers=3, hidden=32)
    model, batch, expected = _reference(path, family, side)
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    assert (batch["attention_mask"][:, 0 if side == "left" else -1] == 0).any()
    adapter = families.get_family(model.config)
    assert adapter.name == family
    got = families.hidden_states(model.base_model, adapter, batch["input_ids"], batch["attention_mask"])
    assert len(got) == len(expected) == 4
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, k
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m: f"hidden state {k}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_build_empty_is_all_meta_and_modules_exist(tiny_hf_model, family):
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(tiny_hf_model(family, layers=3, hidden=32))
    base, adapter = families.build_empty(config)
    assert all(p.device.type == "meta" for p in base.parameters())
    assert adapter.n_blocks(base) == 3
    names = adapter.modules_for(3, 0, 3)
    for name in names:
        base.get_submodule(name)
    assert names[: len(adapter.embeddings)] == list(adapter.embeddings)
    assert adapter.modules_for(3, 1, 2) == [adapter.block_name(1)]
    # Rotary frequencies are buffers computed for real: a shard without the embeddings needs them.
    for shared in adapter.shared:
        assert all(b.device.type == "cpu" for b in base.get_submodule(shared).buffers())


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    assert families.position_ids(mask).tolist() == [[0, 1, 2, 2], [0, 0, 0, 1]]


def test_llama_like_types_share_one_adapter():
    for model_type in ("llama", "mistral", "qwen2"):
        assert families.get_family(model_type).name == "llama"


def test_unsupported_architecture_lists_supported_and_suggests_one_shard():
    with pytest.raises(GwrayInputError) as err:
        families.get_family("t5")
    msg = str(err.value)
    assert "'t5'" in msg and "gpt2" in msg and "llama" in msg and "bert" in msg and "shards: 1" in msg
    assert "\n" not in msg


def test_parameters_on_meta_restores_register_parameter():
    original = torch.nn.Module.register_parameter
    with families.parameters_on_meta():
        lin = torch.nn.Linear(4, 4)
    assert lin.weight.device.type == "meta"
    assert torch.nn.Module.register_parameter is original
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
