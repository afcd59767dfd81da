"""What every conversion rule is made of, and what a rule may ask about the graph.

* ``Rule`` (a base name + a ``build`` function), ``Replacement`` (what ``build``
  returns) and ``Decline`` (what ``build`` raises to leave a node as it is).
* ``ConversionContext``: read-only view of the graph module; fetches the parameters a
  functional reads (``F.conv2d(x, self.weight)``) and answers facts such as "is this
  value a size?" or "what rank has this input?".
* Graph facts needed before any rule runs: which nodes only read tensor metadata
  (``x.size()``, ``x.shape``, ``len(x)``) and which compute sizes from them.
* Small helpers the rule families share (``constant``, ``unary``, ``check_training``...).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Callable, Optional

import torch
from torch import fx, nn

from .. import modules as ops

__all__ = [
    "ConversionContext",
    "Decline",
    "Register",
    "Replacement",
    "Rule",
    "bind_inplace",
    "check_training",
    "constant",
    "find_size_nodes",
    "has_node",
    "metadata_reason",
    "unary",
]


class Decline(Exception):
    """Raised by a rule to leave a node unchanged; the message is the reason."""


@dataclass
class Replacement:
    """What replaces a node: ``module(*args, **kwargs)``; ``name`` overrides the rule's
    base name when the module differs from the op (``F.hardtanh(x, 0, 6)`` -> ``relu6``)."""

    module: nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: Optional[str] = None


@dataclass(frozen=True)
class Rule:
    name: str  # base name of the new module ("relu" -> relu, relu_1, ...)
    build: Callable[..., Replacement]

    @cached_property
    def signature(self) -> inspect.Signature:
        """``build``'s signature: (ctx, <the op's own parameters>)."""
        return inspect.signature(self.build)


# How a rule family adds its rules to the table (see registry.py):
# register(name, build, functions=("F.relu", ...), methods=("relu", ...)).
Register = Callable[..., None]


# --------------------------------------------------------------------------------------
# What a rule may ask about the graph
# --------------------------------------------------------------------------------------

# Methods and attributes that read tensor metadata rather than compute on values.
# Methods that read only a tensor's shape or other metadata, never its values.
SHAPE_METHODS = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "element_size", "stride",
     "storage_offset", "is_contiguous", "get_device", "is_floating_point", "is_complex"}
)
# ... and what prepare_model also leaves as it is: item()/tolist() read values into Python.
METADATA_METHODS = SHAPE_METHODS | {"item", "tolist", "data_ptr"}
METADATA_ATTRIBUTES = frozenset(
    {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad",
     "is_quantized", "is_sparse", "names"}
)
# Functions that, applied to sizes, give sizes (shape arithmetic such as `c // groups`).
_SCALAR_MODULES = frozenset({"_operator", "operator", "math", "builtins"})

# Single-input modules that keep the rank of their input (used to find the rank of a
# functional batch_norm's input from the conv before it). Pooling keeps it too, batched or not
# (timm's DenseNet: conv → BN → ReLU → MaxPool → cat → F.batch_norm).
_RANK_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid, nn.GELU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Identity, nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)


def _is_metadata(node: fx.Node, methods: frozenset = METADATA_METHODS) -> bool:
    if node.op == "call_method":
        return node.target in methods
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in METADATA_ATTRIBUTES
        return node.target is len
    return False


def metadata_reason(node: fx.Node) -> Optional[str]:
    if not _is_metadata(node):
        return None
    if node.op == "call_function" and node.target is getattr:
        return f"reads tensor attribute `.{node.args[1]}` (metadata, not a computation)"
    return "reads tensor metadata (sizes, rank), not a computation"


def find_size_nodes(graph: fx.Graph, methods: frozenset = METADATA_METHODS) -> set[fx.Node]:
    """Nodes whose value is a size or other non-tensor metadata: ``x.size()``, ``x.shape``,
    ``len(x)``, and indexing/arithmetic on those. One forward pass in graph order. `methods`:
    the tensor methods that count (SHAPE_METHODS leaves out item()/tolist(), which read values)."""
    sizes: set[fx.Node] = set()
    for node in graph.nodes:
        if _is_metadata(node, methods):
            sizes.add(node)
        elif node.op == "call_function" and getattr(node.target, "__module__", None) in _SCALAR_MODULES:
            inputs = node.all_input_nodes
            if inputs and all(n in sizes for n in inputs):
                sizes.add(node)
    return sizes


class ConversionContext:
    """Read-only view of the graph module that rules use to fetch parameters and facts.

    ``borrowed`` collects the (get_attr node, tensor) pairs the current rule took, so
    ``prepare.py`` can decide afterwards whether a tensor is shared and must be copied.
    """

    def __init__(self, graph_module: fx.GraphModule, size_nodes: set[fx.Node]) -> None:
        self.graph_module = graph_module
        self.training = graph_module.training
        self.size_nodes = size_nodes
        self.borrowed: list[tuple[fx.Node, torch.Tensor]] = []

    def tensor_attribute(self, value: Any, what: str, *, parameter: bool) -> torch.Tensor:
        if not isinstance(value, fx.Node) or value.op != "get_attr":
            raise Decline(f"`{what}` is computed in forward, not a stored parameter")
        tensor = _resolve_attribute(self.graph_module, value.target)
        if parameter and not isinstance(tensor, nn.Parameter):
            raise Decline(f"`{what}` ({value.target}) is a buffer or constant, not an nn.Parameter")
        if not isinstance(tensor, torch.Tensor):
            raise Decline(f"`{what}` ({value.target}) is not a tensor")
        self.borrowed.append((value, tensor))
        return tensor

    def parameter(self, value: Any, what: str) -> nn.Parameter:
        return self.tensor_attribute(value, what, parameter=True)

    def optional_parameter(self, value: Any, what: str) -> Optional[nn.Parameter]:
        return None if value is None else self.parameter(value, what)

    def is_size(self, value: Any) -> bool:
        return isinstance(value, fx.Node) and value in self.size_nodes

    def input_rank(self, node: Any) -> Optional[int]:
        """Rank of ``node``'s value if a conv (or batch norm) module produced it, possibly
        through rank-preserving activations and concatenations (every tensor torch.cat joins
        has the output's rank, so the first one is followed: timm's DenseNet normalizes a cat
        of conv outputs); None when unknown. Assumes a batched conv input (ConvNd also
        accepts unbatched ones). Iterative, bounded."""
        for _ in range(16):
            if (isinstance(node, fx.Node) and node.op == "call_function"
                    and node.target in (torch.cat, torch.concat) and node.args
                    and isinstance(node.args[0], (list, tuple)) and node.args[0]):
                node = node.args[0][0]
                continue
            if not isinstance(node, fx.Node) or node.op != "call_module":
                return None
            module = self.graph_module.get_submodule(node.target)
            if isinstance(module, ops.Concat) and node.args:
                node = node.args[0]
                continue
            if isinstance(module, nn.modules.conv._ConvNd):
                return len(module.kernel_size) + 2
            if isinstance(module, nn.BatchNorm1d):
                return None  # 2-d or 3-d input: ambiguous
            if isinstance(module, nn.BatchNorm2d):
                return 4
            if isinstance(module, nn.BatchNorm3d):
                return 5
            if not isinstance(module, _RANK_PRESERVING) or not node.args:
                return None
            node = node.args[0]
        return None

    def require_sole_reader(self, node: Any, op: str) -> None:
        """An in-place op may become an out-of-place module only if nothing else reads
        the tensor it mutates (and the tensor is not a model input or parameter)."""
        if not isinstance(node, fx.Node) or node.op in ("placeholder", "get_attr") or len(node.users) != 1:
            raise Decline(
                f"in-place `{op}` mutates a tensor that is read elsewhere (or is a model "
                "input/parameter) and its torch.nn module is not in-place"
            )


def _resolve_attribute(root: nn.Module, target: str) -> Any:
    owner_path, _, name = target.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    return getattr(owner, name)


# --------------------------------------------------------------------------------------
# Helpers shared by the rule families
# --------------------------------------------------------------------------------------

def constant(value: Any, what: str) -> Any:
    """``value`` as a Python constant; Decline if it holds a value computed at run time."""
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    if found:
        raise Decline(f"`{what}` is a value of the graph ({found[0].name}), not a Python constant")
    return value


def has_node(value: Any) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return bool(found)


def unary(module: nn.Module, input: Any, name: Optional[str] = None) -> Replacement:
    return Replacement(module, (input,), name=name)


def bind_inplace(build: Callable) -> Callable:
    """The rule of an in-place variant (``F.relu_``, ``x += y``): ``build`` with ``inplace=True``."""
    return partial(build, inplace=True)


def check_training(ctx: ConversionContext, training: Any, op: str) -> None:
    """A functional's ``training`` argument was fixed when the graph was traced. A module
    follows ``module.training`` instead, which is the same thing only if the traced value
    equals the model's mode (the usual ``training=self.training``)."""
    training = constant(training, "training")
    if bool(training) != ctx.training:
        mode = "training" if ctx.training else "eval"
        raise Decline(
            f"`{op}` is called with training={training} while the model is in {mode} mode: "
            "a module would follow the model's mode instead"
        )
