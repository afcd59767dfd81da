"""Framework-neutral bookkeeping of the manual CLE APIs, shared by prequant.torch and prequant.keras.

AIMET's step-by-step API hands over layers, not a model: ``CrossLayerScaling.scale_cls_sets(sets)``
and ``HighBiasFold.bias_fold(infos, bn_layers)``. This module turns such calls into engine calls:

- ``ChainGraph``: an engine graph holding only the given layers, connected along the chains by the
  engine's ``connect_layer_chains`` (adjacency is then the caller's promise, as in AIMET);
- ``bias_fold``: which pairs go to the engine's ``absorb_high_bias`` with which BN statistics, on the
  model's own graph when the pairs came from ``scale_model`` (so what sits between is known) and on a
  chain graph otherwise;
- the AIMET return values built from the engine's results (``scales_of``, ``infos_from_result``);
- which BN may feed absorption: one folded *after* its layer (conv→BN). A BN folded before it (BN→conv)
  says nothing about the layer's output; ``record_folded_before`` / ``folded_before`` keep that record.

The decisions (is a pair absorbable, how much moves, why a pair is declined) are the engine's. A front end
supplies only the translation of its layer objects, as two small adapters:

``ChainLayers`` (one per chain graph): ``node_name(layer, index, taken)`` a name unique in the graph;
``add_layer(graph, name, layer, inp, out)`` adds the layer's weight/bias views, layout, kind and
padding (raising InvalidRequestError for a layer CLS cannot hold); ``write_back(graph, layers,
bias_added)`` writes the engine's changes to the layer objects.

``ModelLayers`` (one per model): ``graph``; ``name_of(layer)`` the node of a layer's first call or
None; ``apply_high_bias(result)`` writes what absorption changed; ``bn_stats(layer, bn)`` the
(γ, β) of `bn` as float64 arrays, or None if it has none to give (not a batch norm, no affine
parameters); whether it was folded before `layer` is decided here. ChainGraph offers the same
interface (its ``bn_stats`` is the ChainLayers'), so bias_fold treats both alike.
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

from prequant import _core
from prequant._cls_info import ClsSetInfo, ClsSetLayerPairInfo

# ---- the chain graph of given layers ---------------------------------------------------------------


class ChainGraph:
    """An engine graph holding only the given layers, each chain's layers connected in order
    (the engine's connect_layer_chains decides the order and refuses a layer feeding two)."""

    def __init__(self, layer_chains: Sequence[Sequence], adapter):
        self.adapter = adapter
        self.names: dict[int, str] = {}
        self.layers: dict[str, object] = {}
        self.graph = _core.Graph()
        for chain in layer_chains:
            for layer in chain:
                if id(layer) not in self.names:
                    name = adapter.node_name(layer, len(self.layers), self.layers)
                    self.names[id(layer)] = name
                    self.layers[name] = layer
                    adapter.add_layer(self.graph, name, layer, f"{name}:in", f"{name}:out")
        _core.connect_layer_chains(self.graph, [[self.names[id(layer)] for layer in chain] for chain in layer_chains])

    def name_of(self, layer) -> str | None:
        return self.names.get(id(layer))

    def write_back(self, bias_added: Sequence[str] = ()) -> None:
        self.adapter.write_back(self.graph, self.layers, list(bias_added))

    # the ModelLayers interface, so bias_fold treats a chain graph and a model's graph alike
    def bn_stats(self, layer, bn):
        return self.adapter.bn_stats(layer, bn)

    def apply_high_bias(self, result) -> None:
        self.write_back([a.layer2 for a in result.absorbed if a.bias_added])


# ---- scale_cls_sets ------------------------------------------------------------------------------------


def scale_cls_sets_on_chain(cls_sets: Sequence[Sequence], adapter, **options):
    """scale_cls_sets without a model: the sets on a chain graph of their layers, written back."""
    chain = ChainGraph(cls_sets, adapter)
    specs = [[chain.name_of(layer) for layer in s] for s in cls_sets]
    result = _core.scale_cls_sets(chain.graph, specs, **options)
    chain.write_back()
    return result


def scales_of(result) -> list:
    """AIMET's return value of scale_cls_sets: per set its scales (a pair) or (scale12, scale23)."""
    out = []
    for s in result.sets:
        scales = [p.scale for p in s.pairs]
        out.append(scales[0] if len(scales) == 1 else tuple(scales))
    return out


def infos_from_result(sets, layer_of: Callable[[str], object], model, *, keep_names: bool) -> list[ClsSetInfo]:
    """ClsSetInfo per scaled set of scale_model, remembering the model so bias_fold can see what sits
    between (a BoundedReLU to lower with the bias) and, with keep_names, the engine's node names."""
    infos = []
    for s in sets:
        pairs = []
        for p in s.pairs:
            info = ClsSetLayerPairInfo(layer_of(p.layer1), layer_of(p.layer2), p.scale, p.relu_between)
            info._model = model
            if keep_names:
                info._names = (p.layer1, p.layer2)
            pairs.append(info)
        infos.append(ClsSetInfo(*pairs))
    return infos


# ---- HighBiasFold.bias_fold ----------------------------------------------------------------------------


def bias_fold(cls_set_info_list: Sequence[ClsSetInfo], bn_layers, *, model_layers: Callable, chain_layers: Callable):
    """High-bias absorption of the given scaled pairs; returns the engine's HighBiasResult.

    `bn_layers` maps a layer to the BN folded after it: a dict, or (layer, bn[, ...]) items.
    Pairs that all came from one model's scale_model run on that model's graph
    (``model_layers(model)`` gives its ModelLayers); any other pairs on a chain graph of their
    layers (``chain_layers()`` gives a fresh ChainLayers)."""
    pairs = [p for info in cls_set_info_list for p in info.cls_pair_info_list]
    bn_items = list(bn_layers.items()) if isinstance(bn_layers, dict) else [tuple(x)[:2] for x in bn_layers]
    models = {id(getattr(p, "_model", None)): getattr(p, "_model", None) for p in pairs}
    in_model = len(models) == 1 and None not in models.values()
    if in_model:
        view = model_layers(next(iter(models.values())))
    else:
        view = ChainGraph([[p.layer1, p.layer2] for p in pairs], chain_layers())
    sets = []
    for p in pairs:
        # scale_model's own node names where it kept them (a layer called at several places)
        l1, l2 = (getattr(p, "_names", None) if in_model else None) or (view.name_of(p.layer1), view.name_of(p.layer2))
        sets.append(_core.ClsSetResult([_core.ClsPairResult(l1 or "?", l2 or "?", p.scale_factor,
                                                             p.relu_activation_between_layers)]))
    stats = {}
    for layer, bn in bn_items:
        name = view.name_of(layer)
        if name is None or folded_before(layer, bn):
            continue  # a BN folded into the layer's input says nothing about its output
        gamma_beta = view.bn_stats(layer, bn)
        if gamma_beta is not None:
            stats[name] = gamma_beta
    result = _core.absorb_high_bias(view.graph, sets, stats)
    view.apply_high_bias(result)
    return result


# ---- which BN may feed absorption ----------------------------------------------------------------------

# layer -> ids of the BNs folded *before* it (BN→conv); high-bias absorption must ignore them.
_FOLDED_BEFORE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def record_folded_before(layer, bn) -> None:
    """Remember that `bn` was folded into `layer` from before it (BN→conv)."""
    _FOLDED_BEFORE.setdefault(layer, set()).add(id(bn))


def folded_before(layer, bn) -> bool:
    """True if `bn` was folded into `layer` from before it (BN→conv): its γ, β describe the
    layer's input, not its output, so high-bias absorption must not use them."""
    try:
        return id(bn) in _FOLDED_BEFORE.get(layer, ())
    except TypeError:  # an object that cannot be weakly referenced was never recorded
        return False
