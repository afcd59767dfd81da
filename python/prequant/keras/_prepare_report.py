"""What prepare_model did: one record per new layer, one per original variable.

Before: the tracer's notes on each layer it created (origin, kind, weight pairs).
After:  a PrepareReport listing
        - every layer of the prepared model: where it came from, and why it is opaque if so;
        - every variable of the original model: the new weight(s) holding its value
          ("copied"; several when a reused layer was unrolled), the opaque layer keeping it
          ("opaque"), or "unused" when no call() on the traced path reached it;
        - the classes Keras cannot find by itself when loading the saved model
          (``custom_objects``: opaque custom layers and prequant's generated layers).
"""

from __future__ import annotations

import dataclasses

from ._prepare_errors import PrepareError
from ._prepare_layer_kinds import is_builtin_class


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """One layer of the prepared model.

    kind: "input"; "copy" (a built-in layer copied with its weights); "unrolled" (a further
    use of a reused layer, copied again); "op" (arithmetic, keras.ops or a TensorFlow
    function, as a built-in or generated layer); "constant"; "opaque" (a custom layer kept
    whole); "shared" (a layer that could not be copied: the original object itself).
    """

    name: str
    class_name: str
    kind: str
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class VariableRecord:
    """One variable of the original model and where its value lives now.

    status: "copied", "opaque" (kept inside an opaque layer), "shared" (the prepared model
    uses the original variable object) or "unused".
    destinations: paths of the prepared model's weights holding the value.
    layers: names of the prepared model's layers holding those weights.
    """

    original: str
    status: str
    destinations: tuple
    layers: tuple = ()
    note: str = ""


@dataclasses.dataclass
class PrepareReport:
    """What prepare_model did. ``unsavable_layers`` maps each layer kept as the original object
    (its config does not round-trip) to why the prepared model cannot be saved or reloaded."""

    layers: list
    variables: list
    custom_objects: dict
    warnings: list
    unsavable_layers: dict = dataclasses.field(default_factory=dict)

    @property
    def opaque_layers(self) -> list:
        return [r for r in self.layers if r.kind == "opaque"]

    def variable(self, original_path: str) -> VariableRecord:
        for record in self.variables:
            if record.original == original_path:
                return record
        raise KeyError(original_path)

    def layer(self, name: str) -> LayerRecord:
        for record in self.layers:
            if record.name == name:
                return record
        raise KeyError(name)

    def summary(self) -> str:
        counts = {}
        for record in self.layers:
            counts[record.kind] = counts.get(record.kind, 0) + 1
        status = {}
        for record in self.variables:
            status[record.status] = status.get(record.status, 0) + 1
        lines = [
            "prepare_model: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + " layers; variables: " + ", ".join(f"{n} {k}" for k, n in sorted(status.items())),
        ]
        for record in self.opaque_layers:
            lines.append(f"  opaque {record.name} ({record.class_name}): {record.note}")
        for record in self.variables:
            if record.status != "copied":
                where = ", ".join(record.destinations) or "-"
                lines.append(f"  {record.status:7} {record.original} -> {where} {record.note}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def build_report(original_model, prepared_model, tracer) -> PrepareReport:
    """Account for every layer of ``prepared_model`` and every variable of ``original_model``."""
    layer_records = []
    destinations = {}  # id(original variable) -> [(kind, layer name, new variable path)]
    accounted_new = set()
    for layer in prepared_model.layers:
        origin = tracer.origins.get(id(layer))
        if origin is None:
            layer_records.append(LayerRecord(layer.name, type(layer).__name__, "input", "input"))
            continue
        layer_records.append(
            LayerRecord(layer.name, type(layer).__name__, origin.kind, origin.source, origin.note))
        for source_var, new_var in origin.weight_pairs:
            destinations.setdefault(id(source_var), []).append(
                (origin.kind, layer.name, new_var.path))
            accounted_new.add(id(new_var))
        if origin.kind == "constant":
            accounted_new.update(id(w) for w in layer.weights)

    unexplained = [w.path for w in prepared_model.weights if id(w) not in accounted_new]
    if unexplained:
        raise PrepareError(
            f"internal: prepared weights {unexplained} have no original; please report this",
            layer_name=prepared_model.name)

    variable_records = account_variables(original_model.weights, destinations, lambda var: var.path)
    return PrepareReport(layer_records, variable_records, _custom_objects(prepared_model),
                         list(tracer.warnings), dict(tracer.unsavable))


def account_variables(weights, destinations: dict, name_of) -> list:
    """One VariableRecord per distinct original variable: where it went in the prepared model.

    ``destinations``: id(original variable) -> [(kind, new layer name, new variable path)], kind
    as the layer's origin ("copy", "opaque", "shared", ...). Keras 3 and tf_keras reports both
    account here; ``name_of`` reads a variable's name (``.path`` in Keras 3, ``.name`` in tf_keras)."""
    records, seen = [], set()
    for var in weights:
        if id(var) in seen:
            continue
        seen.add(id(var))
        found = destinations.get(id(var), [])
        paths = tuple(path for _, _, path in found)
        kinds = {kind for kind, _, _ in found}
        names = tuple(dict.fromkeys(name for _, name, _ in found))
        if not found:
            status, note = "unused", "no call() on the traced path uses it: left out"
        elif kinds == {"opaque"}:
            status, note = "opaque", f"kept in opaque layer {', '.join(names)}"
        elif "shared" in kinds:
            status, note = "shared", f"the original variable itself, in {', '.join(names)}"
        else:
            status = "copied"
            note = f"unrolled into {len(paths)} copies" if len(paths) > 1 else ""
        records.append(VariableRecord(name_of(var), status, paths, names, note))
    return records


def _custom_objects(prepared_model) -> dict:
    """Classes in the prepared model (opaque layers' sublayers too) Keras cannot import itself."""
    found = {}
    for layer in prepared_model.layers:
        for sub in layer._flatten_layers(include_self=True, recursive=True):
            cls = type(sub)
            if not is_builtin_class(cls) or cls.__module__.startswith("prequant."):
                found[cls.__name__] = cls
    return found
