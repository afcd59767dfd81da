"""``prepare_model``: trace a PyTorch model with torch.fx into a flat graph of modules.

Before::

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.relu(self.conv2(x)) + x      # self.relu is also used below
        return self.relu(torch.flatten(x, 1))

After (a ``torch.fx.GraphModule``)::

    conv1 -> relu_1 (nn.ReLU, was F.relu) -> conv2 -> relu (the model's self.relu)
          -> add (prequant Add, was +) -> flatten (nn.Flatten) -> relu_2 (a copy of self.relu)

so a quantizer sees every operation as its own module. Steps:

1. Symbolically trace the model (the user's model is never modified).
   ``modules_to_exclude`` / ``module_classes_to_exclude`` are leaves: not traced into.
2. Unroll reused modules: every call of a module after the first gets a deep copy
   (``relu_1``, ``conv1_1``). Modules holding parameters or buffers are kept shared
   instead when ``unroll_shared_weights=False``. And, in the same pass in graph order:
3. Replace functionals and tensor methods by modules, using the rules in
   ``op_conversions/`` (matched by the function object / method name). A rule that
   cannot preserve the model's output exactly declines, and the node stays as is.
   Parameters a functional read (``F.conv2d(x, self.weight)``) move into the new
   module; a parameter read in several places is copied or shared like a reused module.
4. Record all of it in ``prepared.prequant_summary`` (a ``PrepareSummary``).
5. Take ownership (``copy=True``, the default): every module the prepared model took from
   the original is replaced by a new module of the same class, and every parameter and
   buffer is cloned once, straight into it. So the prepared model shares no module,
   parameter or buffer with the original, and nothing is copied twice (a ``copy.deepcopy``
   of the whole model first cost 2-4x the trace itself; cloning only the tensors the result
   holds, once, is the least an independent model can cost). ``copy=False`` shares leaf
   modules and tensors with the original, as AIMET's ``prepare_model`` does.

The GraphModule is built once, without code (``_graph_module_without_code``), and its
``forward`` is generated and compiled once, after the rewrite: code generation for a
graph that is about to change cost a third of the trace. Reused modules are unrolled with a
tree copy that clones each tensor once (no ``copy.deepcopy``), and tensors prepare_model made
itself are never cloned again by step 5.

The prepared model keeps the original's ``training`` flag. Everything here walks the
graph as a list: no recursion on graph depth.
"""

from __future__ import annotations

import copy
import itertools
import os
import traceback
import warnings
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import fx, nn
from torch.fx.graph_module import _copy_attr

import prequant
from torch.fx.proxy import TraceError

from ._fresh_memory import copy_tensor_data
from .op_conversions.base import ConversionContext, Decline, Replacement, Rule, find_size_nodes
from .op_conversions.registry import describe_target, find_rule, reason_kept, register_optional_rules
from .prepare_summary import Conversion, KeptOp, PrepareSummary, Unrolling

__all__ = ["PrepareError", "PrepareSummary", "prepare_model"]


class PrepareError(prequant.PrepareError, TraceError):
    """torch.fx could not trace the model; the message names the module and source line
    where tracing failed and lists the workarounds. ``node`` is the qualified name of the
    module where tracing failed ('' for the model's own forward). A ``prequant.PrepareError``
    (hence a ``prequant.Error``); also a torch.fx ``TraceError`` for code that catches that."""


def prepare_model(
    model: nn.Module,
    modules_to_exclude: Optional[Sequence[nn.Module]] = None,
    module_classes_to_exclude: Optional[Sequence[type]] = None,
    concrete_args: Optional[dict[str, Any]] = None,
    unroll_shared_weights: bool = True,
    copy: bool = True,
) -> fx.GraphModule:
    """Return a ``GraphModule`` computing the same outputs as ``model`` in which every
    functional / tensor method with a ``torch.nn`` (or ``prequant.torch.modules``)
    equivalent is a module and no module is called twice.

    By default the result shares no module, parameter or buffer with ``model`` (each
    tensor is cloned once, into the prepared model's own modules), so later in-place
    edits (batch-norm folding, equalization) leave ``model`` alone. A leaf module whose
    non-tensor attributes cannot be deep-copied stays shared (with a warning).

    Args:
        model: the model; not modified.
        modules_to_exclude: submodules of ``model`` to keep as single opaque nodes.
        module_classes_to_exclude: module classes (and subclasses) to keep opaque.
        concrete_args: values for forward arguments to specialize on while tracing
            (e.g. a flag that steers Python control flow), as in
            ``torch.fx.symbolic_trace``.
        unroll_shared_weights: give each call of a module holding parameters or
            buffers its own deep copy (default); if False such calls keep sharing it.
            Modules without parameters or buffers are always unrolled.
        copy: give the prepared model its own modules and tensors (default). With
            ``copy=False`` its leaf modules, parameters and buffers are the original's, as
            with AIMET's ``prepare_model`` and ``torch.fx.symbolic_trace``: no second copy
            of the weights in memory, but folding or equalizing the prepared model then
            changes the original too. The default is the safe one: AIMET's own flow
            (prepare, then fold and equalize in place) silently edits the user's original
            model, which surprises anyone who compares the two afterwards.

    Raises:
        PrepareError: the model cannot be traced by torch.fx.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_model expects a torch.nn.Module, got {type(model).__name__}")
    if concrete_args is not None and not isinstance(concrete_args, dict):
        raise TypeError("concrete_args must be a dict mapping forward argument names to values")
    excluded_classes = _check_classes(module_classes_to_exclude)
    excluded_modules = _check_excluded_modules(model, modules_to_exclude)
    model_name = type(model).__name__
    notes: list[str] = []

    if model.training:
        _warn(notes, f"{model_name} is in training mode: Python branches on `self.training` are "
                     "traced on their training path and stay fixed in the prepared model. "
                     "Call model.eval() first to prepare for inference or post-training quantization.")

    work, excluded_ids = model, {id(m) for m in excluded_modules}
    tracer = _PrepareTracer(excluded_ids, excluded_classes)
    graph = _trace(tracer, work, concrete_args, model)
    prepared = _graph_module_without_code(tracer.root, graph, model_name)
    prepared.training = model.training

    summary = PrepareSummary(model=model_name, excluded=list(tracer.excluded_names), notes=notes)
    _note_dropped_hooks(work, graph, notes)
    _note_dropped_no_grad(tracer, notes)
    _note_excluded_subclasses(tracer.root, tracer.excluded_names, notes)
    owned: dict[int, torch.Tensor] = {}  # id -> tensor prepare made itself (never cloned again)
    _GraphRewriter(prepared, unroll_shared_weights, summary, owned).run()
    graph.lint()
    if copy:
        _take_ownership(prepared, model, notes, owned)
    prepared.recompile()  # the only code generation: the rewritten graph's
    prepared.prequant_summary = summary
    # GraphModule.__deepcopy__ rebuilds the module and keeps only attributes listed here.
    prepared.meta.setdefault("_user_preserved_attributes", {})["prequant_summary"] = summary
    return prepared


def _warn(notes: list[str], message: str, stacklevel: int = 3) -> None:
    """Warn (pointing at the caller of prepare_model) and keep the message in the summary."""
    notes.append(message)
    warnings.warn(f"prepare_model: {message}", UserWarning, stacklevel=stacklevel)


def _check_classes(classes: Optional[Sequence[type]]) -> tuple:
    classes = tuple(classes or ())
    for cls in classes:
        if not isinstance(cls, type) or not issubclass(cls, nn.Module):
            raise TypeError(f"module_classes_to_exclude must hold nn.Module subclasses, got {cls!r}")
    return classes


# --------------------------------------------------------------------------------------
# 1. Copy and trace
# --------------------------------------------------------------------------------------

def _check_excluded_modules(model: nn.Module, modules_to_exclude: Optional[Sequence[nn.Module]]) -> list:
    requested = list(modules_to_exclude or ())
    submodule_ids = {id(m) for m in model.modules()}
    for index, module in enumerate(requested):
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules_to_exclude[{index}] is a {type(module).__name__}, not an nn.Module")
        if id(module) not in submodule_ids:
            raise ValueError(f"modules_to_exclude[{index}] ({type(module).__name__}) is not a submodule "
                             "of the model passed to prepare_model")
    return requested


_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), type, range, frozenset,
              torch.dtype, torch.device, torch.layout, torch.memory_format)


_IMMUTABLE_TYPES = frozenset(_IMMUTABLE)
_CONTAINERS = (dict, set, list)


def _is_immutable(value: Any) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE_TYPES:  # exact type first: a module has ~25 attributes, most of them plain
        return True
    if kind is tuple:  # kernel_size, stride, padding...: a loop, not a generator per tuple
        for item in value:
            if type(item) not in _IMMUTABLE_TYPES and not _is_immutable(item):
                return False
        return True
    if isinstance(value, tuple):
        return all(_is_immutable(v) for v in value)
    return isinstance(value, _IMMUTABLE)


def _copy_module_shell(module: nn.Module, memo: dict) -> nn.Module:
    """A new module of the same class with the same attributes; child modules, parameters
    and buffers are left to the caller (tensors cloned once, via ``memo``)."""
    new = module.__class__.__new__(module.__class__)
    state = {}
    for key, value in module.__dict__.items():
        if key in ("_parameters", "_buffers", "_modules"):
            state[key] = value.copy()  # entries replaced by the caller
        elif _is_immutable(value):
            state[key] = value
        elif isinstance(value, _CONTAINERS) and not value:
            state[key] = value.copy()  # the many empty hook dicts: no deepcopy machinery
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


def _graph_module_without_code(root: nn.Module, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """``fx.GraphModule(root, graph)`` without generating and compiling its code: the graph is
    rewritten next, and prepare_model compiles it once at the end (the constructor's own
    code generation would be thrown away; it costs as much as a third of the trace).
    The attributes the graph uses are installed as the constructor does (fx's ``_copy_attr``)."""
    prepared = fx.GraphModule(root, fx.Graph(), class_name)  # nothing to copy, nothing to compile
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            _copy_attr(root, prepared, node.target)
    prepared._graph = graph  # the `graph` setter would recompile
    graph.owning_module = prepared
    tracer_cls = graph._tracer_cls
    prepared._tracer_cls = tracer_cls if tracer_cls and "<locals>" not in tracer_cls.__qualname__ else None
    prepared._tracer_extras = graph._tracer_extras or {}
    return prepared


def _copy_module_tree(module: nn.Module, owned: dict[int, torch.Tensor]) -> nn.Module:
    """An independent copy of ``module`` and its submodules, each tensor cloned once (what
    ``copy.deepcopy`` does, without its per-attribute machinery). The clones are recorded in
    ``owned``. Walks the tree with a stack: no recursion on depth."""
    memo: dict[int, Any] = {}
    top = memo[id(module)] = _copy_module_shell(module, memo)
    stack = [top]
    while stack:
        parent = stack.pop()
        for name, child in parent._modules.items():
            if child is not None:
                copied = memo.get(id(child))
                if copied is None:
                    copied = memo[id(child)] = _copy_module_shell(child, memo)
                    stack.append(copied)
                parent._modules[name] = copied
        for table in (parent._parameters, parent._buffers):
            for key, tensor in table.items():
                if tensor is not None:
                    table[key] = clone = _clone_tensor(tensor, memo)
                    owned[id(clone)] = clone
    return top


def _take_ownership(prepared: fx.GraphModule, model: nn.Module, notes: list[str],
                    owned: dict[int, torch.Tensor]) -> None:
    """Replace every module ``prepared`` took from ``model`` by a shell copy, then clone every
    parameter and buffer once (those in ``owned`` were made by prepare_model: kept as they
    are). Walks the module tree with a stack: no recursion on depth."""
    original = {id(m) for m in model.modules()}
    memo: dict[int, Any] = dict(owned)
    stack: list[nn.Module] = [prepared]
    visited = {id(prepared)}
    while stack:
        parent = stack.pop()  # never an original module: each is visited once, after copying
        for table in (parent._parameters, parent._buffers):
            for key, tensor in table.items():
                if tensor is not None:
                    table[key] = _clone_tensor(tensor, memo)
        for name, child in parent._modules.items():
            if child is None:
                continue
            if id(child) in original:
                copied = memo.get(id(child))
                if copied is None:
                    try:
                        copied = _copy_module_shell(child, memo)
                    except Exception as exc:  # e.g. a non-leaf tensor stored as an attribute
                        _warn(notes, f"could not copy module '{name}' ({type(child).__name__}: "
                                     f"{type(exc).__name__}: {exc}); the prepared model shares it "
                                     "and its parameters with the original", stacklevel=4)
                        continue  # shared: neither its tensors nor its children are cloned
                    memo[id(child)] = copied
                parent._modules[name] = child = copied  # replacing a value: the dict's size is unchanged
            if id(child) not in visited:
                visited.add(id(child))
                stack.append(child)


def _clone_tensor(tensor: torch.Tensor, memo: dict) -> torch.Tensor:
    """A clone (Parameter stays Parameter, requires_grad kept); one per original tensor."""
    if id(tensor) in memo:
        return memo[id(tensor)]
    if type(tensor) in (torch.Tensor, nn.Parameter) and tensor.is_leaf and tensor.grad is None:
        # the common case without deepcopy's machinery (storage memo, __reduce_ex__); Python
        # attributes set on a parameter are kept (Parameter.__deepcopy__ drops them)
        clone = copy_tensor_data(tensor)  # fresh memory, its pages mapped in one call
        clone = nn.Parameter(clone, tensor.requires_grad) if type(tensor) is nn.Parameter \
            else clone.requires_grad_(tensor.requires_grad)
        if tensor.__dict__:
            clone.__dict__.update(copy.deepcopy(tensor.__dict__, memo))
        memo[id(tensor)] = clone
        return clone
    try:
        return copy.deepcopy(tensor, memo)
    except RuntimeError:  # a non-leaf tensor stored as an attribute: its value, detached
        memo[id(tensor)] = clone = tensor.detach().clone()
        return clone


class _PrepareTracer(fx.Tracer):
    """fx.Tracer that keeps excluded modules as leaves and remembers where tracing failed."""

    # Default arguments: torch.load re-creates a GraphModule's tracer class without any.
    def __init__(self, excluded_ids: Optional[set[int]] = None, excluded_classes: tuple = ()) -> None:
        super().__init__()
        self._excluded_ids = excluded_ids or set()
        self._excluded_classes = excluded_classes
        self.excluded_names: dict[str, None] = {}  # ordered set
        self.failed_module: Optional[tuple[str, type]] = None
        self.no_grad_nodes: list[str] = []  # recorded inside torch.no_grad() / inference_mode()

    def create_node(self, *args, **kwargs):
        # fx records no grad-mode switches: a `with torch.no_grad():` block in forward vanishes.
        # The grad mode is still switched while tracing, so the nodes made inside can be named.
        node = super().create_node(*args, **kwargs)
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            self.no_grad_nodes.append(node.name)
        return node

    def trace(self, root, concrete_args=None):
        # traced with gradients on even if the caller is inside torch.no_grad(), so that the
        # grad mode seen at each node is forward's own
        with torch.inference_mode(False), torch.enable_grad():
            return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self._excluded_ids or isinstance(m, self._excluded_classes):
            self.excluded_names[module_qualified_name] = None
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # innermost module: its handler runs first
                try:
                    path = self.path_of_module(m)
                except Exception:
                    path = "<module outside the model>"
                self.failed_module = (path, type(m))
            raise


def _trace(tracer: _PrepareTracer, root: nn.Module, concrete_args: Optional[dict],
           model: nn.Module) -> fx.Graph:
    try:
        return tracer.trace(root, concrete_args)
    except Exception as exc:
        path = tracer.failed_module[0] if tracer.failed_module else ""
        raise PrepareError(_describe_trace_failure(exc, tracer, model), node=path) from exc


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_frame(exc: BaseException) -> Optional[traceback.FrameSummary]:
    """The innermost traceback frame outside torch and prequant: the model's own line."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        filename = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if not filename.startswith((_TORCH_DIR, _THIS_DIR)):
            return frame
    return frames[-1] if frames else None


def _describe_trace_failure(exc: BaseException, tracer: _PrepareTracer, model: nn.Module) -> str:
    model_name = type(model).__name__
    path, cls = tracer.failed_module or ("", type(model))
    where = f"module '{path}' ({cls.__name__})" if path else f"{model_name}.forward"
    lines = [f"prepare_model could not trace {model_name}: torch.fx symbolic tracing failed in {where}."]
    frame = _user_frame(exc)
    if frame is not None:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines.append(f"{type(exc).__name__}: {exc}")
    lines.append("Workarounds:")
    lines.append("  - concrete_args={'<forward argument>': value}: fix an input that steers Python "
                 "control flow (if/for/while on its value) so tracing follows one path.")
    if path:
        lines.append(f"  - modules_to_exclude=[model.get_submodule('{path}')] or "
                     f"module_classes_to_exclude=[{cls.__name__}]: keep that module as one opaque "
                     "node instead of tracing into it (equalization then leaves it alone).")
    else:
        lines.append("  - modules_to_exclude / module_classes_to_exclude: move the untraceable code "
                     "into a submodule and keep that submodule as one opaque node.")
    lines.append("  - torch.fx.wrap('fn') at module scope (or @torch.fx.wrap on a helper): record a "
                 "call to a non-torch function (len, math.sqrt, code that builds tensors from sizes "
                 "or branches on values) as one node instead of tracing through it.")
    return "\n".join(lines)


def _torch_base_overridden(module: nn.Module) -> Optional[type]:
    """The torch.nn class `module` subclasses, if its own class overrides that class's forward."""
    for base in type(module).__mro__[1:]:
        if base.__module__.startswith("torch.nn.") and base is not nn.Module:
            return base if type(module).forward is not base.forward else None
    return None


def _note_excluded_subclasses(root: nn.Module, excluded: dict, notes: list[str]) -> None:
    """An excluded subclass of a torch.nn layer that overrides forward (timm's BatchNormAct2d,
    Conv2dSame, StdConv2d) is not its base class: equalization will leave it alone."""
    found: dict[str, str] = {}
    for path in excluded:
        try:
            module = root.get_submodule(path)
        except AttributeError:
            continue
        base = _torch_base_overridden(module)
        if base is not None:
            found.setdefault(type(module).__name__, base.__name__)
    for cls, base in found.items():
        _warn(notes, f"{cls} is kept as a leaf (excluded) and overrides {base}.forward, so it may "
                     f"compute something else than a {base}: batch-norm folding and cross-layer "
                     f"scaling will leave every {cls} alone. To have them equalized, do not exclude "
                     f"{cls} (prepare_model then traces into its forward)", stacklevel=4)


def _note_dropped_no_grad(tracer: _PrepareTracer, notes: list[str]) -> None:
    nodes = tracer.no_grad_nodes
    if nodes:
        shown = ", ".join(nodes[:6]) + (f", ... ({len(nodes) - 6} more)" if len(nodes) > 6 else "")
        _warn(notes, f"torch.no_grad() / inference_mode() regions in forward are not part of the "
                     f"prepared model (torch.fx records no grad-mode switch): nodes {shown} now run "
                     "with gradients enabled. Outputs are the same; under training, gradients now "
                     "flow through them (wrap the call in torch.no_grad() yourself if that matters)",
              stacklevel=4)


def _note_dropped_hooks(work: nn.Module, graph: fx.Graph, notes: list[str]) -> None:
    """Hooks on modules that were traced through (not leaves) do not survive tracing."""
    hooked = [
        (name, m) for name, m in work.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
        or getattr(m, "_backward_pre_hooks", None)
    ]
    if not hooked:
        return
    leaves = {node.target for node in graph.nodes if node.op == "call_module"}
    for name, _ in hooked:
        inside_leaf = any(name == leaf or name.startswith(leaf + ".") for leaf in leaves)
        if not inside_leaf:
            _warn(notes, f"hooks registered on '{name or type(work).__name__}' are not part of the "
                         "prepared model (the module was traced through, not kept as a leaf)", stacklevel=4)


# --------------------------------------------------------------------------------------
# Naming and placing new modules
# --------------------------------------------------------------------------------------

def _existing_module(root: nn.Module, path: str) -> Optional[nn.Module]:
    if not path:
        return root
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


class _ModuleNamer:
    """Free names for new modules: ``base`` or ``base_1``, ``base_2``, ... whichever the
    parent module does not use yet. Remembers the last index per (parent, base), so
    naming n modules alike costs O(n), not O(n^2)."""

    def __init__(self, root: fx.GraphModule) -> None:
        self.root = root
        self._next_index: dict[tuple[int, str], int] = {}

    def _free_name(self, owner: Optional[nn.Module], base: str, always_suffix: bool) -> str:
        def taken(name: str) -> bool:
            return owner is not None and hasattr(owner, name)

        if not always_suffix and not taken(base):
            return base
        key = (id(owner), base)
        index = self._next_index.get(key, 1)
        while taken(f"{base}_{index}"):
            index += 1
        self._next_index[key] = index + 1
        return f"{base}_{index}"

    def add(self, parent: str, base: str, module: nn.Module, always_suffix: bool = False) -> str:
        """Register ``module`` under ``parent`` with a free name; return its qualified name."""
        root = self.root
        name = self._free_name(_existing_module(root, parent), base, always_suffix)
        target = f"{parent}.{name}" if parent else name
        if root.add_submodule(target, module):
            return target
        # a non-module attribute sits on the path: fall back to the root
        target = self._free_name(root, base, always_suffix)
        root.add_module(target, module)
        return target


def _scope_of(node: fx.Node) -> str:
    """Qualified name of the module whose forward made this call ('' for the root)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


# --------------------------------------------------------------------------------------
# 2 + 3. Unroll reused modules, convert functionals and methods: one pass in graph order
# --------------------------------------------------------------------------------------

def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in itertools.chain(module.parameters(), module.buffers()))


def _tensor_ids(modules: Iterable[nn.Module]) -> set[int]:
    return {id(t) for m in modules for t in itertools.chain(m.parameters(), m.buffers())}


def _build(rule: Rule, ctx: ConversionContext, node: fx.Node) -> Replacement:
    try:
        bound = rule.signature.bind(ctx, *node.args, **node.kwargs)
    except TypeError as exc:
        raise Decline(f"arguments not understood by the conversion rule ({exc})") from None
    return rule.build(*bound.args, **bound.kwargs)


class _GraphRewriter:
    """Walks the graph once, in order, so new names number in the order of the code
    (``relu``, ``relu_1``, ...). Nodes are rewritten in place and keep their names, so the
    summary's "at node relu_1" is also the variable name in the prepared model's code."""

    def __init__(self, root: fx.GraphModule, unroll_shared_weights: bool, summary: PrepareSummary,
                 owned: dict[int, torch.Tensor]) -> None:
        register_optional_rules()
        self.root = root
        self.graph = root.graph
        self.unroll_shared_weights = unroll_shared_weights
        self.summary = summary
        self.owned = owned
        self.namer = _ModuleNamer(root)
        self.size_nodes = find_size_nodes(self.graph)
        self.ctx = ConversionContext(root, self.size_nodes)
        self.called: set[str] = set()
        self._claimed: Optional[set[int]] = None  # see claimed()
        self.emptied_attributes: list[str] = []

    def claimed(self) -> set[int]:
        """Tensors owned by a called module or by an earlier conversion: a second owner means
        sharing, which unroll_shared_weights resolves like a reused module. Collected on the
        first conversion that takes a tensor (most models have none: no walk over all weights)."""
        if self._claimed is None:
            self._claimed = _tensor_ids(self.root.get_submodule(n.target) for n in self.graph.nodes
                                        if n.op == "call_module")
        return self._claimed

    def run(self) -> None:
        for node in list(self.graph.nodes):
            if node.op == "call_module":
                self._unroll_if_reused(node)
            elif node.op in ("call_function", "call_method"):
                self._convert(node)
        _drop_unused_attributes(self.root, self.emptied_attributes)

    def _unroll_if_reused(self, node: fx.Node) -> None:
        target = node.target
        if target not in self.called:
            self.called.add(target)
            return
        module = self.root.get_submodule(target)
        if _holds_state(module) and not self.unroll_shared_weights:
            self.summary.unrollings.append(Unrolling(target, node.name, None))
            return
        parent, _, leaf = target.rpartition(".")
        node.target = self.namer.add(parent, leaf, _copy_module_tree(module, self.owned), always_suffix=True)
        self.summary.unrollings.append(Unrolling(target, node.name, node.target))

    def _convert(self, node: fx.Node) -> None:
        op = describe_target(node)
        found = find_rule(node)
        if found is None or node in self.size_nodes:
            self.summary.kept.append(KeptOp(op, node.name, reason_kept(node, self.size_nodes), node.op))
            return
        _, rule = found
        self.ctx.borrowed = []
        try:
            replacement = _build(rule, self.ctx, node)
        except Decline as decline:
            self.summary.kept.append(KeptOp(op, node.name, str(decline), node.op))
            return

        module = replacement.module
        module.train(self.root.training)
        target = self.namer.add(_scope_of(node), replacement.name or rule.name, module)
        self._resolve_borrowed_tensors(node, module, target)

        inputs, original_op = node.all_input_nodes, node.op
        node.op, node.target = "call_module", target
        node.args, node.kwargs = replacement.args, replacement.kwargs
        self.called.add(target)
        for input_node in inputs:  # parameters now owned by the new module
            if input_node.op == "get_attr" and not input_node.users:
                self.emptied_attributes.append(input_node.target)
                self.graph.erase_node(input_node)
        self.summary.conversions.append(Conversion(op, node.name, target, type(module).__name__, original_op))

    def _resolve_borrowed_tensors(self, node: fx.Node, module: nn.Module, target: str) -> None:
        """A parameter the new module took from the model may also be used elsewhere
        (weight tying, one weight in two F.conv2d calls): copy it for this module, or
        keep it shared when unroll_shared_weights=False."""
        for attr_node, tensor in self.ctx.borrowed:
            used_elsewhere = any(user is not node for user in attr_node.users)
            claimed = self.claimed()
            if id(tensor) not in claimed and not used_elsewhere:
                claimed.add(id(tensor))
                continue
            if not self.unroll_shared_weights:
                self.summary.unrollings.append(Unrolling(attr_node.target, node.name, None))
                continue
            for slot in _slots_holding(module, tensor):
                owner_path, _, name = slot.rpartition(".")
                owner = module.get_submodule(owner_path) if owner_path else module
                if isinstance(tensor, nn.Parameter):
                    duplicate = nn.Parameter(tensor.detach().clone(), requires_grad=tensor.requires_grad)
                else:
                    duplicate = tensor.detach().clone()
                setattr(owner, name, duplicate)
                claimed.add(id(duplicate))
                self.owned[id(duplicate)] = duplicate
                self.summary.unrollings.append(Unrolling(attr_node.target, node.name, f"{target}.{slot}"))


def _slots_holding(module: nn.Module, tensor: torch.Tensor) -> list[str]:
    named = itertools.chain(module.named_parameters(remove_duplicate=False),
                            module.named_buffers(remove_duplicate=False))
    return [name for name, value in named if value is tensor]


def _drop_unused_attributes(root: fx.GraphModule, targets: list[str]) -> None:
    """Remove parameters that moved into new modules from the (bare) modules that held
    them, so each tensor has one owner, then drop modules left empty."""
    if not targets:
        return
    still_read = {n.target for n in root.graph.nodes if n.op == "get_attr"}
    leaves = {n.target for n in root.graph.nodes if n.op == "call_module"}
    for target in dict.fromkeys(targets):
        owner_path, _, name = target.rpartition(".")
        if target in still_read:
            continue
        if any(owner_path == leaf or owner_path.startswith(leaf + ".") for leaf in leaves):
            continue  # belongs to a module that is still called
        owner = _existing_module(root, owner_path)
        if owner is not None and hasattr(owner, name):
            delattr(owner, name)
    root.delete_all_unused_submodules()
