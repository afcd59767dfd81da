"""The demo's stress case (GUIDE): a function-preserving random per-channel rescaling between
layers, the weight-range spread that per-tensor INT8 cannot survive.

Before: a prepared model with its batch norms folded and no ReLU6 (ReLU6 clips at a fixed 6, so
rescaling through it would change the function). After: for every pair of consecutive layers
in a cross-layer-scaling set (the engine names the sets), producer output channel c and its
bias are multiplied by s[c] = 10**U(-2, 2) and the consumer's input channel c is divided by
s[c]. Only positively homogeneous ops (ReLU, zero padding) sit between, so relu(s·x) / s =
relu(x) and the FP32 function is unchanged, while per-channel weight ranges now spread over
four orders of magnitude. For a depthwise consumer its input channel c is its output channel c.
"""

from __future__ import annotations


def rescale_randomly(model, seed: int = 0) -> int:
    """Rescale `model` in place as above; returns how many channels were rescaled."""
    import torch

    from prequant import _core
    from prequant.torch._engine_graph import build_engine_graph

    generator = torch.Generator().manual_seed(seed)
    eg = build_engine_graph(model)
    rescaled = 0
    with torch.no_grad():
        for cls_set in _core.find_cls_sets(eg.graph).sets:
            layers = [eg.modules[name] for name in cls_set.layers]
            for producer, consumer in zip(layers, layers[1:]):
                channels = producer.weight.shape[0]
                s = 10 ** (torch.rand(channels, generator=generator) * 4 - 2)
                producer.weight.mul_(s.view(-1, *[1] * (producer.weight.dim() - 1)))
                if producer.bias is not None:
                    producer.bias.mul_(s)
                if getattr(consumer, "groups", 1) > 1:  # a Linear has no groups
                    consumer.weight.div_(s.view(-1, *[1] * (consumer.weight.dim() - 1)))
                else:
                    consumer.weight.div_(s.view(1, -1, *[1] * (consumer.weight.dim() - 2)))
                rescaled += channels
    return rescaled
