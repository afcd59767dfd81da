"""Expand Functional and Sequential models node by node onto new symbolic tensors.

Before: a Functional or Sequential model, possibly holding further Functional/Sequential
        models as nodes (a keras.applications backbone inside a classifier).
After:  every node's operation is handed to the tracer with its arguments mapped onto the new
        graph; nested graph models are walked inline, so no trace of them is left.

The walk keeps an explicit stack of frames, one per graph model being expanded: models
nested to any depth, and graphs of any depth, never grow the Python stack.
"""

from __future__ import annotations

import keras
from keras import tree

from ._prepare_errors import PrepareError
from ._prepare_layer_kinds import LayerKind, classify


def input_name(tensor) -> str:
    """The name of the Input layer that made ``tensor``."""
    return tensor._keras_history.operation.name


def bind_by_name(given: list, names: list, where: str) -> list | None:
    """The order in which the tensors ``given`` (a list) feed inputs named ``names``.

    By name when the given Inputs carry exactly the model's input names (in any order); None
    (positional) when none of them is named like a model input at another position; a
    PrepareError when some are (a binding that position and name would make differently).
    """
    given_names = [input_name(x) for x in given]
    if given_names == list(names):
        return None
    if len(given) == len(names) and sorted(given_names) == sorted(names) and len(set(names)) == len(names):
        by_name = {n: x for n, x in zip(given_names, given, strict=True)}
        return [by_name[n] for n in names]
    clashes = [(i, n) for i, n in enumerate(given_names) if n in names and names.index(n) != i]
    if clashes:
        i, n = clashes[0]
        raise PrepareError(
            f"input_layer[{i}] is named '{n}', but by position it would feed {where}'s input "
            f"'{names[i]}' while {where} has an input named '{n}' too (its inputs: {list(names)}); "
            f"the binding is ambiguous",
            fix=f"pass a dict {{name: keras.Input(...)}} keyed by {where}'s input names, or a list "
            f"named and ordered as {list(names)}, or Inputs whose names are none of them.")
    return None


def _flat_model_inputs(model, args, kwargs, given=None):
    """The model's call inputs, flattened in the order of ``model.inputs``.

    ``given``: the prepared model's Inputs as the user listed them (a subclassed model given a
    list). When its call() hands them to this graph model unchanged, in that order, they are
    bound by name (bind_by_name): the names are all the binding the user gave.
    """
    inputs = args[0] if args else kwargs.get("inputs")
    struct = model._inputs_struct
    if isinstance(inputs, dict) and not isinstance(struct, dict):
        names = [x.name for x in tree.flatten(struct)]
        inputs = [inputs[name] for name in names]
    elif isinstance(struct, (list, tuple)) and len(struct) == 1 and not isinstance(
        inputs, (list, tuple, dict)
    ):
        inputs = [inputs]
    flat = tree.flatten(inputs)
    if len(flat) != len(model.inputs):
        raise PrepareError(
            f"it takes {len(model.inputs)} inputs but is called with {len(flat)}",
            layer_name=model.name,
        )
    if given is not None and [id(x) for x in flat] == [id(x) for x in given]:
        flat = bind_by_name(flat, [input_name(x) for x in model.inputs], f"model '{model.name}'") or flat
    return flat


class _FunctionalFrame:
    """Walk of one Functional model: its nodes in Keras' own execution order."""

    def __init__(self, model, args, kwargs, given=None):
        self.model = model
        flat_inputs = _flat_model_inputs(model, args, kwargs, given)
        self.values = {id(x): y for x, y in zip(model.inputs, flat_inputs, strict=True)}
        by_depth = model._nodes_by_depth
        self.nodes = [
            node
            for depth in sorted(by_depth, reverse=True)
            for node in by_depth[depth]
            if node.operation is not None and not node.is_input
        ]
        self.position = 0
        self.current = None

    def next_call(self):
        while self.position < len(self.nodes):
            node = self.nodes[self.position]
            self.position += 1
            if any(id(x) not in self.values for x in node.input_tensors):
                continue  # a node of another model sharing this layer
            self.current = node
            args, kwargs = node.arguments.fill_in(self.values)
            return node.operation, args, kwargs
        return None

    def deliver(self, outputs):
        for original, new in zip(self.current.outputs, tree.flatten(outputs), strict=True):
            self.values[id(original)] = new

    def result(self):
        missing = [x.name for x in self.model.outputs if id(x) not in self.values]
        if missing:
            raise PrepareError(
                f"outputs {missing} cannot be computed from its inputs",
                layer_name=self.model.name,
            )
        flat = [self.values[id(x)] for x in self.model.outputs]
        return tree.pack_sequence_as(self.model._outputs_struct, flat)


class _SequentialFrame:
    """Walk of one Sequential model: its layers applied in turn."""

    def __init__(self, model, args, kwargs):
        self.layers = list(model.layers)
        self.value = args[0] if args else kwargs.get("inputs")
        self.position = 0

    def next_call(self):
        if self.position >= len(self.layers):
            return None
        layer = self.layers[self.position]
        self.position += 1
        return layer, (self.value,), {}

    def deliver(self, outputs):
        self.value = outputs

    def result(self):
        return self.value


def _frame_for(tracer, model, args, kwargs):
    if isinstance(model, keras.Sequential):
        return _SequentialFrame(model, args, kwargs)
    return _FunctionalFrame(model, args, kwargs, getattr(tracer, "given_inputs", None))


def expand_graph_model(tracer, model, args, kwargs):
    """Trace ``model(*args, **kwargs)`` node by node; return its outputs (model structure).

    ``tracer.call_operation_or_layer(op, args, kwargs)`` handles every node that is not
    itself a graph model.
    """
    stack = [_frame_for(tracer, model, args, kwargs)]
    while True:
        frame = stack[-1]
        step = frame.next_call()
        if step is None:
            result = frame.result()
            stack.pop()
            if not stack:
                return result
            stack[-1].deliver(result)
            continue
        operation, op_args, op_kwargs = step
        if isinstance(operation, keras.layers.Layer) and classify(operation) is LayerKind.GRAPH:
            stack.append(_frame_for(tracer, operation, op_args, op_kwargs))
        else:
            frame.deliver(tracer.call_operation_or_layer(operation, op_args, op_kwargs))


def unpack_singleton(outputs):
    """What Functional.call returns for a one-output list: the tensor itself."""
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs
