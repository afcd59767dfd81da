"""torch.chunk / Tensor.chunk on the channel axis join equalization regions (issue 12: Split /
Slice / Chunk): the chunk's channel count comes from the conv or batch norm producing its input
(through activations); chunks are ceil(C / n) channels, the last one smaller. The equalized model
keeps its output (random BN statistics, negative gamma). A chunk of a tensor whose channel count
the front end cannot see (a reshape between) stays opaque, with the model unchanged there."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model


class Chunked(nn.Module):
    """conv → BN → ReLU → chunk(n) on channels → one conv per chunk → cat → conv."""

    def __init__(self, channels: int, chunks: int, method: bool):
        super().__init__()
        self.method, self.chunks = method, chunks
        self.c0 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        size = -(-channels // chunks)
        widths = [min(channels, (k + 1) * size) - k * size for k in range(chunks)]
        self.parts = nn.ModuleList(nn.Conv2d(w, 4, 1) for w in widths)
        self.head = nn.Conv2d(4 * chunks, 5, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.c0(x)))
        parts = y.chunk(self.chunks, 1) if self.method else torch.chunk(y, self.chunks, dim=1)
        return self.head(torch.cat([conv(parts[k]) for k, conv in enumerate(self.parts)], dim=1))


def _randomized(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    c = model.bn.num_features
    with torch.no_grad():
        model.bn.weight.copy_(torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0) * (0.5 + torch.rand(c, generator=gen)))
        model.bn.bias.copy_(0.5 * torch.randn(c, generator=gen))
        model.bn.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
        model.bn.running_var.copy_(torch.exp(torch.empty(c).uniform_(-4.6, 2.3, generator=gen)))
        model.c0.weight.mul_(torch.exp(torch.empty(c, 1, 1, 1).uniform_(-2.3, 2.3, generator=gen)))
    return model.eval()


@pytest.mark.parametrize("channels,chunks,method", [(8, 2, False), (8, 3, True), (7, 2, True)])
def test_chunk_on_channels_joins_a_region(channels, chunks, method):
    torch.manual_seed(0)
    model = _randomized(Chunked(channels, chunks, method))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, regions=True)
    sinks = {s for r in result.regions.regions for s in r.sinks}
    assert {f"parts.{k}" for k in range(chunks)} <= sinks, \
        ([(r.sources, r.sinks) for r in result.regions.regions], [d.reason for d in result.regions.declined])
    with torch.no_grad():
        out = model(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


class ChunkAfterReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c0(x).reshape(x.shape[0], 8, 8, 8)
        a, b = y.chunk(2, 1)
        return self.a(a) + self.b(b)


def test_chunk_of_unknown_channel_count_stays_opaque():
    model = ChunkAfterReshape().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, regions=True)
    assert not any("a" in r.sinks for r in result.regions.regions)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
