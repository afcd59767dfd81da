"""The conversion table: assembles the rule families into one lookup by fx node target,
and says what a node calls and why a node without a rule stays as it is.

``FUNCTION_RULES`` maps a function object (``F.relu``, ``operator.add``...) to
(display name, rule); ``METHOD_RULES`` maps a tensor-method name (``"view"``) to a rule.
When two registrations name the same target the first wins, so the family order below
is part of the table. Ops a given torch version lacks are skipped.
"""

from __future__ import annotations

import operator
import sys
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx

from . import activations, arithmetic, dropout, layers, spatial, tensor_ops
from .base import Rule, metadata_reason

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "describe_target",
    "find_rule",
    "reason_kept",
    "register_optional_rules",
]

_NAMESPACES = {"F": F, "torch": torch, "operator": operator}

# function object -> (display name, rule); method name -> rule
FUNCTION_RULES: dict[Any, tuple[str, Rule]] = {}
METHOD_RULES: dict[str, Rule] = {}

# In this order; the first registration of a target wins.
_FAMILIES = (activations, dropout, spatial, layers, arithmetic, tensor_ops)


def _register(name: str, build: Callable, functions: tuple = (), methods: tuple = ()) -> None:
    rule = Rule(name, build)
    for qualname in functions:
        namespace, _, attr = qualname.rpartition(".")
        fn = getattr(_NAMESPACES[namespace], attr, None)
        if fn is not None:  # tolerate ops a given torch version lacks
            FUNCTION_RULES.setdefault(fn, (qualname, rule))
    for method in methods:
        if hasattr(torch.Tensor, method):
            METHOD_RULES.setdefault(method, rule)


for _family in _FAMILIES:
    _family.register_rules(_register)


def register_optional_rules() -> None:
    """Rules for functions of libraries prequant does not import itself: registered once
    the library is loaded (torchvision's fx-wrapped ``stochastic_depth`` in EfficientNet,
    ConvNeXt, ... -> ``torchvision.ops.StochasticDepth``)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    fn = getattr(module, "stochastic_depth", None)
    if fn is not None and fn not in FUNCTION_RULES:
        FUNCTION_RULES[fn] = ("torchvision.ops.stochastic_depth", Rule("stochastic_depth", dropout.stochastic_depth))


def find_rule(node: fx.Node) -> Optional[tuple[str, Rule]]:
    """(display name, rule) for a call_function/call_method node, or None."""
    if node.op == "call_function":
        try:
            return FUNCTION_RULES.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        rule = METHOD_RULES.get(node.target)
        return (f"Tensor.{node.target}", rule) if rule is not None else None
    return None


def describe_target(node: fx.Node) -> str:
    """Readable name of what a node calls: ``F.relu``, ``Tensor.view``, ``operator.add``."""
    found = find_rule(node)
    if found is not None:
        return found[0]
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module == "builtins":
        return name
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module == "torch" or module.startswith("torch.") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"


def reason_kept(node: fx.Node, size_nodes: set[fx.Node]) -> str:
    """Why a call_function/call_method node without a rule stays as it is."""
    reason = metadata_reason(node)
    if reason is not None:
        return reason
    if node in size_nodes:
        if node.target is operator.getitem:
            return "indexes a size/shape value, not a tensor"
        return "arithmetic on sizes/shape values, not on tensors"
    if node.op == "call_function" and node.target is operator.getitem:
        return "indexing/slicing or picking an element of a tuple: no torch.nn module does this"
    if node.op == "call_method":
        return f"no torch.nn module for Tensor.{node.target}"
    module = getattr(node.target, "__module__", None) or ""
    if module.split(".")[0] not in ("torch", "_operator", "operator", "math", "builtins", ""):
        return "function wrapped with torch.fx.wrap: kept as one node, not traced into"
    return f"no torch.nn module for {describe_target(node)}"
