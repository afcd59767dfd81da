"""What ``prepare_model`` did to a model, as data: ``prepared.prequant_summary``.

Before: a model with ``F.relu``, ``x + y`` and one ``nn.ReLU`` called twice.
After:  a ``PrepareSummary`` listing

* conversions: "functional F.relu at node relu -> module relu (ReLU)"
* unrollings:  "reused module relu at node relu_1 -> independent copy relu_1"
* kept ops:    "method Tensor.size at node size: reads tensor metadata ..."

Every ``call_function`` / ``call_method`` node of the traced graph appears exactly once,
either as a conversion or as a kept op with its reason: nothing is skipped silently.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["Conversion", "KeptOp", "PrepareSummary", "Unrolling"]


def _kind(node_op: str) -> str:
    return "method" if node_op == "call_method" else "functional"


@dataclass(frozen=True)
class Conversion:
    """A functional or tensor method replaced by a module."""

    op: str           # what the model called: "F.relu", "Tensor.view", "operator.add"
    node: str         # name of the replaced fx node in the traced graph
    module: str       # qualified name of the new module in the prepared model
    module_type: str  # class name of the new module: "ReLU", "Add", ...
    node_op: str = "call_function"

    def __str__(self) -> str:
        return f"{_kind(self.node_op)} {self.op} at node {self.node} -> module {self.module} ({self.module_type})"


@dataclass(frozen=True)
class Unrolling:
    """A module (or a parameter of a converted functional) used more than once.

    ``copy`` names the independent copy made for this use; ``None`` means the use was
    kept shared because ``unroll_shared_weights=False`` and the object holds weights.
    """

    source: str            # the reused module ("relu") or parameter ("fc.weight")
    node: str              # the graph node of this (second or later) use
    copy: Optional[str]    # the copy's qualified name, or None when kept shared

    def __str__(self) -> str:
        if self.copy is None:
            return f"reused {self.source} at node {self.node} -> kept shared (unroll_shared_weights=False)"
        return f"reused {self.source} at node {self.node} -> independent copy {self.copy}"


@dataclass(frozen=True)
class KeptOp:
    """A functional or method left as it is, with the reason."""

    op: str
    node: str
    reason: str
    node_op: str = "call_function"

    def __str__(self) -> str:
        return f"{_kind(self.node_op)} {self.op} at node {self.node}: {self.reason}"


@dataclass
class PrepareSummary:
    """Everything ``prepare_model`` changed or deliberately left alone."""

    model: str
    conversions: list[Conversion] = field(default_factory=list)
    unrollings: list[Unrolling] = field(default_factory=list)
    kept: list[KeptOp] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # modules kept opaque on request
    notes: list[str] = field(default_factory=list)     # warnings also issued at prepare time

    def converted_ops(self) -> Counter:
        """How many times each op was converted, e.g. ``{"F.relu": 3, "torch.flatten": 1}``."""
        return Counter(c.op for c in self.conversions)

    def kept_ops(self) -> Counter:
        return Counter(k.op for k in self.kept)

    def __str__(self) -> str:
        lines = [f"prepare_model summary for {self.model}"]
        lines.append(f"  converted to modules ({len(self.conversions)}):")
        lines += [f"    {c}" for c in self.conversions]
        lines.append(f"  unrolled reuses ({len(self.unrollings)}):")
        lines += [f"    {u}" for u in self.unrollings]
        lines.append(f"  kept as is ({len(self.kept)}):")
        lines += [f"    {line}" for line in self._grouped_kept()]
        if self.excluded:
            lines.append(f"  excluded from tracing ({len(self.excluded)}): {', '.join(self.excluded)}")
        if self.notes:
            lines.append("  notes:")
            lines += [f"    {note}" for note in self.notes]
        return "\n".join(lines)

    def _grouped_kept(self, max_nodes: int = 6) -> list[str]:
        # Large models repeat the same kept op many times (x.size() in every block):
        # one line per (op, reason) keeps the printout readable; the list stays complete.
        groups: "OrderedDict[tuple, list[str]]" = OrderedDict()
        for kept in self.kept:
            groups.setdefault((_kind(kept.node_op), kept.op, kept.reason), []).append(kept.node)
        lines = []
        for (kind, op, reason), nodes in groups.items():
            shown = ", ".join(nodes[:max_nodes])
            if len(nodes) > max_nodes:
                shown += f", ... ({len(nodes) - max_nodes} more)"
            where = f"node {shown}" if len(nodes) == 1 else f"nodes {shown}"
            lines.append(f"{kind} {op} at {where}: {reason}")
        return lines

    def __repr__(self) -> str:
        return (f"PrepareSummary(model={self.model!r}, conversions={len(self.conversions)}, "
                f"unrollings={len(self.unrollings)}, kept={len(self.kept)})")
