"""Translate a PyTorch model into the engine's graph, and apply the engine's edits back.

Before: an ``nn.Module`` in eval mode (ideally one ``prepare_model`` returned).
After:  a ``_core.Graph`` whose parameters are zero-copy views of the module's parameters, and a
        map from engine node names back to modules. The engine changes the parameter memory in
        place; ``apply_*`` then makes the structural edits the engine's results name (a folded BN
        becomes ``nn.Identity``, a new bias becomes a ``Parameter``, a ReLU6 becomes ``nn.ReLU`` or
        a per-channel ``BoundedReLU``).

The front end decides nothing about folding or scaling: it only says what each fx node is.
Three facts it must state so the engine cannot change the function without knowing:
- shared state: a module called twice, or a parameter held by two modules (or read directly by
  the graph), is given its own copy per call in a GraphModule (as ``prepare_model`` does; undone
  if the engine fails) and is opaque in a plain module, whose forward cannot be rewritten;
- subclasses: a module whose class overrides ``forward`` of a torch.nn class is opaque;
- ranks: nn.Linear contracts the last axis, conv/BN channels sit on axis 1, so each Linear
  carries the rank of its input (derived from the fx graph, no forward pass).
Shape reads (``x.size()``, ``x.ndim``, ``x.shape``) are not data consumers and are left out.

This module walks the graph and handles shared state; what each node becomes is in
``_engine_nodes``, the edits applied afterwards in ``_engine_apply`` (re-exported here, the import
path the rest of the package uses).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from prequant import _core
from prequant.torch._engine_apply import (  # noqa: F401  (re-exported)
    apply_activation_edits,
    apply_equalize,
    apply_folds,
    apply_high_bias,
)
from prequant.torch._engine_nodes import (  # noqa: F401  (PrequantTorchError, _view, _has_padding: re-exported)
    _KNOWN,
    _RELU_FUNCTIONS,
    PrequantTorchError,
    _add_channel_node,
    _add_module,
    _add_split_module,
    _data_inputs,
    _has_padding,
    _overridden_base,
    _tensor_ranks,
    _view,
)
from prequant.torch.op_conversions.base import SHAPE_METHODS, find_size_nodes


@dataclass
class EngineGraph:
    """A model's engine graph and the way back from engine names to modules."""

    graph: _core.Graph
    model: nn.Module
    modules: dict[str, nn.Module] = field(default_factory=dict)   # engine node -> module
    module_names: dict[int, str] = field(default_factory=dict)    # id(module) -> qualified name

    undo: list = field(default_factory=list)                      # unrolling steps to revert

    def restore(self) -> None:
        """Revert the unrolling build_engine_graph did (after an engine failure)."""
        for step in reversed(self.undo):
            if step[0] == "target":
                _, node, old, new = step
                node.target = old
                parent, _, leaf = new.rpartition(".")
                delattr(self.model.get_submodule(parent) if parent else self.model, leaf)
            else:
                _, holder, attr, tensor = step
                setattr(holder, attr, tensor)
        if self.undo:
            self.model.recompile()
        self.undo = []

    @contextlib.contextmanager
    def restored_on_error(self):
        """Undo the unrolling if the engine call (or applying its result) fails."""
        try:
            yield self
        except BaseException:
            self.restore()
            raise

    def module(self, node_name: str) -> nn.Module:
        return self.modules[node_name]

    def name_of(self, module: nn.Module) -> str:
        try:
            return self.module_names[id(module)]
        except KeyError:
            raise _core.InvalidRequestError(
                f"{type(module).__name__} object is not a module of this model"
            ) from None

class _LeafTracer(torch.fx.Tracer):
    """torch.nn's modules, prequant's BoundedReLU, and subclasses of the layers the engine knows
    that do not change how they compute, stay single nodes. (A subclass overriding forward
    outside torch.nn is traced into, fx's default.)"""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _KNOWN) and _overridden_base(m) is None:
            return True
        return super().is_leaf_module(m, qualname)


def trace_graph(model: nn.Module) -> torch.fx.Graph:
    """The model's fx graph (its own if it is a GraphModule); call_module targets name modules of
    `model`. No GraphModule is built: its generated code is not needed here, and building it
    costs about half as much again as the trace itself."""
    if isinstance(model, torch.fx.GraphModule):
        return model.graph
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot trace"
        raise PrequantTorchError(
            f"torch.fx cannot trace {type(model).__name__}: {exc}. Run "
            f"prequant.torch.prepare_model(model, concrete_args=..., modules_to_exclude=...) first"
        ) from exc


def build_engine_graph(model: nn.Module, *, unroll_shared: bool = False, input_ranks=None) -> EngineGraph:
    """Translate `model` (eval mode, CPU, float32/64) into an engine graph.

    ``unroll_shared=True`` (the mutating entry points): in a GraphModule, each later call of a
    module holding parameters gets its own copy and tied parameters are untied, so the engine can
    edit each call alone (``EngineGraph.restore`` undoes it). Otherwise shared layers are opaque.
    ``input_ranks``: the rank of each forward input when known (from dummy_input/input_shapes)."""
    if model.training:
        raise PrequantTorchError(
            f"{type(model).__name__} is in training mode: batch norms then use batch statistics "
            f"and folding would change the model — call model.eval() first"
        )
    fx_graph = trace_graph(model)
    result = EngineGraph(_core.Graph(), model)
    if unroll_shared and isinstance(model, torch.fx.GraphModule):
        result.undo = _unroll_shared_state(model)
    with result.restored_on_error():  # e.g. a float16 parameter: the model stays as it was
        _translate(result, fx_graph, input_ranks)
    return result


def _translate(result: EngineGraph, fx_graph: torch.fx.Graph, input_ranks) -> None:
    model = result.model
    modules = dict(model.named_modules(remove_duplicate=False))
    result.module_names = {id(m): name for name, m in model.named_modules()}
    shared = _shared_state_reasons(fx_graph, modules)
    shape_reads = find_size_nodes(fx_graph, SHAPE_METHODS)  # metadata reads: not data consumers
    ranks = _tensor_ranks(fx_graph, modules, input_ranks)
    calls: dict[str, int] = {}
    for node in fx_graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    g = result.graph
    seen: dict[str, int] = {}
    splits: set[str] = set()  # fx nodes added as a split; their getitem users are its outputs
    for node in fx_graph.nodes:
        if node.op == "placeholder":
            g.graph_inputs = [*g.graph_inputs, node.name]
            continue
        if node.op == "output":
            outs: list[str] = []
            torch.fx.node.map_arg(node.args, lambda n: outs.append(n.name))
            g.graph_outputs = [o for o in outs if o not in shape_reads]
            continue
        if node in shape_reads:
            continue  # reads sizes or rank, not values: not a consumer of the tensor
        inputs, outputs = _data_inputs(node, shape_reads), [node.name]
        if (node.op == "call_function" and node.target is operator.getitem
                and isinstance(node.args[0], torch.fx.Node) and node.args[0].name in splits):
            continue  # an output of the split node above
        if node.op == "call_module":
            module = modules[node.target]
            k = seen.get(node.target, 0)
            seen[node.target] = k + 1
            name = node.target if k == 0 else f"{node.target}#{k}"
            result.modules[name] = module
            if node.target in shared:
                g.add_opaque(name, type(module).__name__, inputs, outputs, reason=shared[node.target])
                continue
            if _add_split_module(g, name, module, node, splits):
                continue
            rank = ranks.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
            _add_module(g, name, module, node, inputs, outputs, calls[node.target], rank, modules)
        elif node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            g.add_activation(node.name, "relu", inputs[:1], outputs, op_type="F.relu")
        elif node.op in ("call_function", "call_method") and _add_channel_node(g, node, modules, splits):
            pass
        elif node.op == "call_method" and node.target == "relu":
            g.add_activation(node.name, "relu", inputs[:1], outputs, op_type="Tensor.relu")
        elif node.op == "call_method" and node.target == "contiguous" and len(node.args) == 1 and not node.kwargs:
            g.add_activation(node.name, "identity", inputs[:1], outputs, op_type="Tensor.contiguous")  # a copy
        else:
            target = getattr(node.target, "__name__", str(node.target))
            g.add_opaque(node.name, f"{node.op}:{target}", inputs, outputs)
    g.lint()


def input_ranks_of(dummy_input=None, input_shapes=None):
    """Ranks of the forward inputs from AIMET's dummy_input / input_shapes arguments, or None."""
    if dummy_input is not None:
        items = dummy_input if isinstance(dummy_input, (tuple, list)) else [dummy_input]
        return [t.dim() if isinstance(t, torch.Tensor) else None for t in items]
    if input_shapes is not None and len(input_shapes):
        shapes = input_shapes if isinstance(input_shapes[0], (tuple, list)) else [input_shapes]
        return [len(s) for s in shapes]
    return None


# ---- shared state -------------------------------------------------------------------------------

def _state(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(slot, tensor) of every parameter, then every buffer, of `module` and its submodules."""
    if not module._modules:  # a leaf (nearly every call): its own tables, no named_modules walk
        return [*((n, t) for n, t in module._parameters.items() if t is not None),
                *((n, t) for n, t in module._buffers.items() if t is not None)]
    return [(n, t) for n, t in itertools.chain(module.named_parameters(remove_duplicate=False),
                                               module.named_buffers(remove_duplicate=False))
            if t is not None]


def _shared_state_reasons(fx_graph: torch.fx.Graph, modules: dict) -> dict[str, str]:
    """call_module targets whose parameters or buffers another call also uses, with the reason:
    editing one call would silently change the other."""
    owners: dict[int, list[str]] = {}
    calls: dict[str, int] = {}
    read_directly: dict[int, str] = {}
    for node in fx_graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            if calls[node.target] == 1:
                for _, t in _state(modules[node.target]):
                    owners.setdefault(id(t), []).append(node.target)
        elif node.op == "get_attr":
            read_directly[id(_attribute(modules[""], node.target))] = node.target
    reasons: dict[str, str] = {}
    fix = "run prepare_model first (it gives each use its own copy)"
    for target, count in calls.items():
        state = _state(modules[target])
        if not state:
            continue
        if count > 1:
            reasons[target] = (f"'{target}' is called at {count} places and its parameters are shared: "
                               f"editing one call would change the others — {fix}")
            continue
        for slot, t in state:
            others = [o for o in owners.get(id(t), []) if o != target]
            if others:
                reasons[target] = (f"'{target}' shares its {slot} with '{others[0]}': editing one would "
                                   f"change the other — {fix}")
                break
            if id(t) in read_directly:
                reasons[target] = (f"'{target}'.{slot} is also read directly by the graph "
                                   f"({read_directly[id(t)]}): editing it would change that use too")
                break
    return reasons


def _attribute(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _unroll_shared_state(gm: torch.fx.GraphModule) -> list:
    """Give each later call of a module holding state its own deep copy, and each module that
    shares a parameter or buffer with an earlier one its own clone (what prepare_model does).
    The function is unchanged. Returns undo steps for EngineGraph.restore."""
    undo: list = []
    called: set[str] = set()
    owned: set[int] = set()
    direct = {id(_attribute(gm, n.target)) for n in gm.graph.nodes if n.op == "get_attr"}
    modules = dict(gm.named_modules(remove_duplicate=False))  # one walk, not one per call
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules.get(node.target) or gm.get_submodule(node.target)
        state = _state(module)
        if not state:
            continue
        if node.target in called:
            parent, _, leaf = node.target.rpartition(".")
            owner = gm.get_submodule(parent) if parent else gm
            index = 1
            while hasattr(owner, f"{leaf}_{index}"):
                index += 1
            new_target = f"{parent}.{leaf}_{index}" if parent else f"{leaf}_{index}"
            module = copy.deepcopy(module)
            gm.add_submodule(new_target, module)
            undo.append(("target", node, node.target, new_target))
            node.target = new_target
            state = _state(module)
        called.add(node.target)
        for slot, t in state:
            if id(t) in owned and id(t) not in direct:
                owner_path, _, attr = slot.rpartition(".")
                holder = module.get_submodule(owner_path) if owner_path else module
                clone = (nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
                         if isinstance(t, nn.Parameter) else t.detach().clone())
                setattr(holder, attr, clone)
                undo.append(("tensor", holder, attr, t))
                owned.add(id(clone))
            else:
                owned.add(id(t))
    if undo:
        gm.recompile()
    return undo
