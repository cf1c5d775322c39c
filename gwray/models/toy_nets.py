"""The toy networks of :mod:`gwray.models.toy`: a pre-norm residual MLP, a residual CNN for small
images, and a residual MLP built with two planted regimes of layers (no training).

Every net exposes ``embed``, ``blocks`` (an ``nn.ModuleList``, in depth order), ``head``,
``layer_names`` (``embed``, ``blocks.0`` …) and ``hidden_states(x)``: the stream after ``embed``
and after each block, the layers gwray captures.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Embed(nn.Module):
    """Maps raw inputs to the residual stream: token embeddings (modular) or a linear map (digits).

    Input (n, 3) integer tokens or (n, n_features) floats; output (n, width).
    """

    def __init__(self, n_inputs: int, width: int, vocab: int | None):
        super().__init__()
        self.vocab = vocab
        if vocab:
            self.tokens = nn.Embedding(vocab, width)
            self.position = nn.Parameter(torch.zeros(n_inputs, width))
            self.proj = nn.Linear(n_inputs * width, width)
        else:
            self.proj = nn.Linear(n_inputs, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab:
            e = self.tokens(x.long()) + self.position
            return self.proj(e.flatten(1))
        return self.proj(x.to(self.proj.weight.dtype))


class Block(nn.Module):
    """Pre-norm residual MLP block: x + W2 gelu(W1 LN(x)); (n, width) -> (n, width)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def _stream(h: torch.Tensor, blocks) -> list[torch.Tensor]:
    """``h`` and the output of each block applied in turn: the residual stream's states."""
    states = [h]
    for block in blocks:
        h = block(h)
        states.append(h)
    return states


class ResidualMLP(nn.Module):
    """Embed -> ``depth`` residual blocks -> LayerNorm + linear head; (n, ...) -> (n, n_classes) logits."""

    def __init__(self, n_inputs: int, n_classes: int, width: int, depth: int, hidden: int,
                 vocab: int | None = None):
        super().__init__()
        self.embed = Embed(n_inputs, width, vocab)
        self.blocks = nn.ModuleList(Block(width, hidden) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_classes))

    @property
    def layer_names(self) -> list[str]:
        return ["embed"] + [f"blocks.{i}" for i in range(len(self.blocks))]

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream after ``embed`` and after each block: depth + 1 tensors (n, width)."""
        return _stream(self.embed(x), self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(x)[-1])


class ConvBlock(nn.Module):
    """Pre-norm residual conv block: x + conv2 gelu(conv1 GN(x)); (n, c, h, w) -> same shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.nn.functional.gelu(self.conv1(self.norm(x))))


class Downsample(nn.Module):
    """Stage transition (not residual): GN then a stride-2 conv, (n, c, h, w) -> (n, 2c, h/2, w/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class ResidualCNN(nn.Module):
    """Conv stem -> ``stages`` stages of ``stage_blocks`` :class:`ConvBlock` s (a :class:`Downsample`
    between stages, channels doubling) -> GN, global average pool, linear head.

    Input (n, side²) flat images (or (n, 1, side, side)); output (n, n_classes) logits. ``blocks``
    lists every block and transition in depth order, so layer i + 1 is the output of ``blocks[i]``.
    """

    def __init__(self, side: int, n_classes: int, channels: int, stages: int, stage_blocks: int):
        super().__init__()
        self.side = side
        self.embed = nn.Conv2d(1, channels, 3, padding=1)
        blocks = []
        for stage in range(stages):
            c = channels * 2**stage
            if stage:
                blocks.append(Downsample(c // 2))
            blocks += [ConvBlock(c) for _ in range(stage_blocks)]
        self.blocks = nn.ModuleList(blocks)
        last = channels * 2 ** (stages - 1)
        self.head = nn.Sequential(nn.GroupNorm(1, last), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(last, n_classes))

    layer_names = ResidualMLP.layer_names

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after ``embed`` and after each block: (n, c, h, w) each."""
        return _stream(self.embed(x.to(self.embed.weight.dtype).reshape(-1, 1, self.side, self.side)),
                       self.blocks)

    forward = ResidualMLP.forward


def planted_net(seed: int | str | None = None) -> tuple[ResidualMLP, list[str]]:
    """A residual MLP built (not trained) with two regimes of layers, and its layer names.

    Blocks 0-3 and 5-7 nudge the stream slightly; block 4 rewrites it. So the layers fall into two
    groups, ``embed`` … ``blocks.3`` and ``blocks.4`` … ``blocks.7``: the known answer the
    block-structure test must find (on every seed). Inputs: (n, 16) floats, e.g.
    :func:`planted_probe`. Usable as a ``model.factory`` (``gwray.models.toy:planted_net``; a
    checkpoint path, if given, is read as the seed).
    """
    torch.manual_seed(int(seed or 0))
    model = ResidualMLP(n_inputs=16, n_classes=2, width=16, depth=8, hidden=64)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            if i == 4:
                block.fc1.weight.mul_(8.0)
                block.fc2.weight.normal_(0.0, 3.0)
            else:
                block.fc2.weight.mul_(0.05)
                block.fc2.bias.zero_()
    return model.eval(), model.layer_names


def planted_probe(n: int = 256, seed: int = 0) -> np.ndarray:
    """(n, 16) float32 standard-normal inputs for :func:`planted_net`."""
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
