"""gwray prune without a run: selection rules against their definitions, block dropping against the
original model with those blocks skipped, perplexity against HF's own loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.prune import scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")
from gwray.prune.evaluate import perplexity
from gwray.prune.hf import causal_family, drop_blocks, probe_scores, save_pruned

TEXTS = ["The cat sat on the mat.", "A much longer sentence about the school and the teacher who came late.",
         "Yes.", "He walked home along the river in the evening rain."]


def _load(path):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    return model, tok


def _skipping(model, family, blocks):
    """Forward hooks that make ``blocks`` of the original model return their input unchanged."""
    handles = []
    for i in blocks:
        def hook(_mod, args, kwargs, output):
            h = args[0] if args else kwargs["hidden_states"]
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        block = family.block_list(model.get_submodule(family.prefix))[i]
        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    return handles


def _qwen2_dir(tmp_path, minilm_dir):
    import shutil

    import transformers as tf

    torch.manual_seed(0)
    config = tf.Qwen2Config(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=64, vocab_size=30522, max_position_embeddings=128,
                            use_sliding_window=True, sliding_window=4, max_window_layers=2)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("family_name", ["gpt2", "gpt_neox", "llama", "qwen2"])
def test_pruned_model_equals_original_with_blocks_skipped(family_name, tiny_hf_model, minilm_dir, tmp_path):
    import transformers as tf

    path = (_qwen2_dir(tmp_path / "src", minilm_dir) if family_name == "qwen2"
            else tiny_hf_model(family_name, layers=4, hidden=32))
    model, tok = _load(path)
    family = causal_family(model.config, str(path))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    for blocks in ([], [1], [3, 0, 2]):
        out = tmp_path / f"pruned-{len(blocks)}"
        save_pruned(drop_blocks(model, family, blocks), path, out, {"dropped": blocks})
        reloaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
        assert reloaded.config.num_hidden_layers == 4 - len(blocks)
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        handles = _skipping(model, family, blocks)
        try:
            with torch.no_grad():
                want = model(**enc).logits
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            got = reloaded(**enc).logits
        if not blocks:
            assert torch.equal(got, want)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (blocks, (got - want).abs().max())
    with torch.no_grad():  # the original is untouched: its skipped-nothing logits are still the reference
        assert torch.equal(model(**enc).logits, _load(path)[0](**enc).logits)


def test_drop_renumbers_layer_types_and_refuses_too_many(minilm_dir, tmp_path):
    path = _qwen2_dir(tmp_path, minilm_dir)
    model, _ = _load(path)
    family = causal_family(model.config, str(path))
    kinds = list(model.config.layer_types)
    assert len(set(kinds)) == 2  # the sliding and full layers both occur, so a wrong subset would show
    pruned = drop_blocks(model, family, [0, 3])
    assert pruned.config.layer_types == [kinds[1], kinds[2]]
    assert [b.self_attn.layer_idx for b in pruned.model.layers] == [0, 1]
    with pytest.raises(GwrayInputError, match="fewer than 4"):
        drop_blocks(model, family, [0, 1, 2, 3])


def _hand_built_gpt2():
    """GPT-2 with 3 blocks: block 0 adds v0, block 1 adds nothing, block 2 adds v2 (constant shifts)."""
    import transformers as tf

    torch.manual_seed(1)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_embd=8, n_head=2, vocab_size=30522, n_positions=64)).eval()
    shifts = [torch.randn(8), torch.zeros(8), torch.randn(8)]
    with torch.no_grad():
        for block, v in zip(model.transformer.h, shifts):
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.copy_(v)
    return model, shifts


def test_bi_and_angular_equal_their_definitions(minilm_dir):
    import transformers as tf

    model, shifts = _hand_built_gpt2()
    tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
    got = probe_scores(model, causal_family(model.config, "hand-built"), tok, TEXTS, max_tokens=16, batch_size=3)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        h0 = model(**enc, output_hidden_states=True).hidden_states[0].double().numpy()
    h = [h0]
    for v in shifts:  # the raw stream; HF's last hidden state is after ln_f, which the scores must not use
        h.append(h[-1] + v.double().numpy())
    real = enc["attention_mask"].numpy().astype(bool)
    last = real.sum(1) - 1  # right padding
    cos = lambda a, b: (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    bi = [1 - cos(h[i][real], h[i + 1][real]).mean() for i in range(3)]
    np.testing.assert_allclose(got["bi"], bi, rtol=1e-6, atol=1e-12)
    assert got["bi"][1] == pytest.approx(0.0, abs=1e-12) and got["tokens"] == real.sum()
    for i in range(4):  # mean pooling over each text's real tokens, of the raw stream
        want = (h[i] * real[..., None]).sum(1) / real.sum(1)[:, None]
        np.testing.assert_allclose(got["mean"][i], want, rtol=1e-6, atol=1e-9)
    rows = np.arange(len(TEXTS))
    for n in (1, 2, 3):
        want = [np.mean(np.arccos(np.clip(cos(h[l][rows, last], h[l + n][rows, last]), -1, 1))) / np.pi
                for l in range(4 - n)]
        np.testing.assert_allclose(scores.angular_distances(got["last"], n), want, rtol=1e-6, atol=1e-9)
    assert scores.angular_choice(got["last"], 1) == [1]  # the identity block
    assert scores.bi_order(got["bi"])[0] == 1


def test_groups_rule_keeps_entry_blocks_and_handles_one_group():
    names = ["e", "b0", "b1", "b2", "b3", "b4", "b5"]
    D = np.zeros((7, 7))
    for i, d in enumerate([0.5, 0.1, 0.05, 0.3, 0.01, 0.2]):
        D[i, i + 1] = D[i + 1, i] = d
    groups = [["e", "b0", "b1"], ["b2", "b3"], ["b4", "b5"]]
    # within-group blocks 0, 1, 3, 5 by GW(input, output), then the entry blocks 2 and 4
    assert scores.group_order(groups, D, names) == [1, 5, 3, 0, 4, 2]
    with pytest.warns(UserWarning, match="k = 1"):
        one, note = scores.pruning_groups({"groups": [names], "k": 1})
    assert scores.group_order(one, D, names) == [4, 2, 1, 5, 3, 0] and "GW(input, output)" in note
    with pytest.warns(UserWarning, match="candidate"):
        cand, _ = scores.pruning_groups({"groups": [names], "k": 1, "candidate": {"groups": groups}})
    assert cand == groups
    assert scores.pruning_groups({"groups": groups, "k": 3}) == (groups, "")


def test_perplexity_equals_hf_loss(tiny_hf_model):
    model, tok = _load(tiny_hf_model("gpt2", layers=4, hidden=32))
    losses, counts = [], []
    with torch.no_grad():
        for text in TEXTS:
            enc = tok([text], return_tensors="pt", return_token_type_ids=False)
            losses.append(float(model(**enc, labels=enc["input_ids"]).loss))
            counts.append(enc["input_ids"].shape[1] - 1)
    want = math.exp(np.dot(losses, counts) / sum(counts))
    assert perplexity(model, tok, TEXTS, max_tokens=64, batch_size=3) == pytest.approx(want, rel=1e-5)


def test_unsupported_architecture_is_named(tiny_hf_model):
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(tiny_hf_model("bert", layers=2, hidden=32))
    with pytest.raises(GwrayInputError, match="architecture 'bert' is not supported by gwray prune"):
        causal_family(config, "x")
