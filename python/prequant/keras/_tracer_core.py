"""What prepare_model's two tracers share: Keras 3 (_prepare_tracer.Tracer) and tf_keras
(_tf_keras_prepare.TFKerasTracer) differ in what they intercept and how they copy a layer, not in
how a traced layer enters the new graph.

Before: a layer met while running a model symbolically, already classified by the subclass
        (built-in leaf, custom layer of layers, custom layer to keep whole).
After:  the new graph holds, for that use of the layer,
        - _call_copy: a fresh copy (from its config) with the original's weights, one per use
          (reuse unrolled), recorded as "copy" or "unrolled";
        - _trace_custom: whatever its call() body produced, sublayer by sublayer, or, if the
          body cannot run on symbolic tensors, the layer kept whole (_keep_opaque);
        - _call_opaque: a copy of the whole layer with all its weights;
        - _call_shared: the original object itself, the last resort when a config does not
          round-trip (its name reserved, a warning saying so).
        Every new layer has a unique name; every one is recorded as a LayerOrigin (kind, source,
        note, (original, new) weight pairs) for the report.

Preconditions: one tracer per prepare_model call; the subclass supplies its framework through
the hooks below (``_clone``, ``_copy_weights``, ``_inference_kwargs``, ``_finish_trace``) and
the class attributes ``_thread_state`` (its own thread-local, so a Keras 3 interceptor never
sees a tf_keras tracer) and ``_interception`` (a MethodSwap of that framework's classes).

Interception is a class-attribute swap, installed while at least one tracer of that framework
is active in any thread (reference-counted) and restored afterwards; the interceptors find this
thread's tracer and let everything through when there is none or it is calling "through" (a
copy or an opaque layer run by the framework's own __call__, which records its node).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading

from ._prepare_errors import NeedsOpaque, PrepareError


class MethodSwap:
    """Class attributes replaced by interceptors while installed; the originals are captured
    when this is built (at import, before any swap)."""

    def __init__(self, swaps):
        self._swaps = [(owner, attr, replacement, owner.__dict__[attr]) for owner, attr, replacement in swaps]
        self._lock = threading.Lock()
        self._count = 0

    @contextlib.contextmanager
    def installed(self):
        with self._lock:
            if self._count == 0:
                for owner, attr, replacement, _ in self._swaps:
                    setattr(owner, attr, replacement)
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if self._count == 0:
                    for owner, attr, _, original in self._swaps:
                        setattr(owner, attr, original)


@dataclasses.dataclass
class LayerOrigin:
    """Where one layer of the prepared model came from."""

    layer: object
    kind: str  # copy | unrolled | opaque | shared | op | constant
    source: str
    note: str = ""
    weight_pairs: list = dataclasses.field(default_factory=list)  # (original var, new var)


class TracerCore:
    """Names, uses, records and the four ways a layer enters the graph; see the module doc."""

    _thread_state: threading.local
    _interception: MethodSwap
    _STRICT_FIX = ""  # how to make an untraceable layer traceable, for strict=True
    _INPUT_FIX = "check that input_layer has the shape and dtype the model was built for."
    _WHOLE_CALL_FIX = _INPUT_FIX  # when a layer called whole (shared) fails on the traced inputs

    def __init__(self, *, strict: bool, reserved_names=()):
        self.strict = strict
        self.passthrough_depth = 0
        self.origins: dict[int, LayerOrigin] = {}
        self.warnings: list[str] = []
        self.unsavable: dict[str, str] = {}  # layer kept as the original object -> why saving fails
        self._uses: dict[int, int] = {}
        self._names = set(reserved_names)
        self._shared_ids: set[int] = set()

    # -- hooks --------------------------------------------------------------------------

    def _clone(self, layer, name):
        """A new layer of the same class from ``layer``'s config, named ``name``."""
        raise NotImplementedError

    def _copy_weights(self, layer, new) -> list:
        """Assign ``layer``'s weights to ``new``; the (original, new) pairs."""
        raise NotImplementedError

    def _inference_kwargs(self, layer, kwargs) -> dict:
        """``kwargs`` for calling ``layer.call`` directly as the framework would in inference."""
        raise NotImplementedError

    def _finish_trace(self, outputs):
        """A traced call()'s outputs as graph tensors, or NeedsOpaque."""
        raise NotImplementedError

    def _before_activate(self):
        """Once per activation, before interception is installed."""

    def _shared_warning(self, layer, note) -> str:
        return f"layer '{layer.name}': {note}"

    # -- activation -------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self):
        if getattr(self._thread_state, "tracer", None) is not None:
            raise PrepareError("prepare_model is already running in this thread")
        self._before_activate()
        self._thread_state.tracer = self
        try:
            with self._interception.installed():
                yield self
        finally:
            self._thread_state.tracer = None

    @contextlib.contextmanager
    def _calling_through(self):
        """Let the framework run a layer itself: no interception inside it."""
        self.passthrough_depth += 1
        try:
            yield
        finally:
            self.passthrough_depth -= 1

    # -- the ways a layer enters the graph ------------------------------------------------

    def _call_copy(self, layer, args, kwargs):
        """A built-in layer: a fresh copy per use, weights copied."""
        name = self._name_for_use(layer)
        kind = "copy" if self._uses[id(layer)] == 1 else "unrolled"
        try:
            new = self._clone(layer, name)
        except Exception as err:  # a config that does not round-trip: keep the object
            self._names.discard(name)
            return self._call_shared(layer, args, kwargs, kind="shared",
                                     note=f"could not be copied ({first_line(err)})")
        try:
            with self._calling_through():
                outputs = new(*args, **kwargs)
        except Exception as err:
            raise PrepareError(f"calling its copy on the traced inputs failed: {first_line(err)}",
                               layer_name=layer.name, fix=self._INPUT_FIX) from err
        with self._calling_through():
            pairs = self._copy_weights(layer, new)
        note = "" if kind == "copy" else f"use {self._uses[id(layer)]} of a reused layer"
        self._record(new, kind, layer_source(layer), note, pairs)
        return outputs

    def _call_opaque(self, layer, args, kwargs, reason):
        """A custom layer kept whole: a copy (from its config) with all its weights."""
        name = self._name_for_use(layer)
        try:
            new = self._clone(layer, name)
            with self._calling_through():
                outputs = new(*args, **kwargs)
                pairs = self._copy_weights(layer, new)
        except Exception as err:
            self._names.discard(name)
            return self._call_shared(
                layer, args, kwargs, kind="opaque",
                note=f"{reason}; could not be copied ({first_line(err)}), so the prepared "
                "model shares this layer object with the original")
        self._record(new, "opaque", layer_source(layer), reason, pairs)
        return outputs

    def _keep_opaque(self, layer, args, kwargs, reason):
        """_call_opaque with a warning, or PrepareError under strict=True."""
        if self.strict:
            raise PrepareError(reason, layer_name=layer.name, fix=self._STRICT_FIX)
        self.warnings.append(f"layer '{layer.name}' kept opaque: {reason}")
        return self._call_opaque(layer, args, kwargs, reason)

    def _call_shared(self, layer, args, kwargs, *, kind, note):
        """Last resort: the original layer object itself becomes part of the new graph."""
        if id(layer) not in self._shared_ids:
            if layer.name in self._names:
                raise PrepareError(
                    f"{note}, and its name is already taken in the prepared model",
                    layer_name=layer.name,
                    fix="give the layer a unique name or a get_config() that round-trips.")
            self._names.add(layer.name)
            self._shared_ids.add(id(layer))
        try:
            with self._calling_through():
                outputs = layer(*args, **kwargs)
        except Exception as err:
            raise PrepareError(
                f"{note}; and calling it whole on the traced inputs failed: {first_line(err)}",
                layer_name=layer.name, fix=self._WHOLE_CALL_FIX) from err
        self._record(layer, kind, layer_source(layer), note, [(w, w) for w in layer.weights])
        self.warnings.append(self._shared_warning(layer, note))
        return outputs

    def _trace_custom(self, layer, args, kwargs):
        """A custom layer of layers: run its call() on symbolic tensors, sublayer by sublayer."""
        reason = None
        before = self._bookkeeping()
        try:
            outputs = self._finish_trace(layer.call(*args, **self._inference_kwargs(layer, kwargs)))
        except NeedsOpaque as err:
            reason = err.reason
        except PrepareError:
            raise
        except Exception as err:
            reason = f"its call() cannot be traced on symbolic tensors ({first_line(err)})"
        if reason is None:
            return outputs
        # What the abandoned trace created stays out of the graph; forget its names and uses.
        self._restore_bookkeeping(before)
        return self._keep_opaque(layer, args, kwargs, reason)

    # -- bookkeeping ----------------------------------------------------------------------

    def _bookkeeping(self):
        return (dict(self._uses), set(self._names), set(self._shared_ids), dict(self.unsavable),
                len(self.warnings))

    def _restore_bookkeeping(self, saved):
        uses, names, shared_ids, unsavable, warning_count = saved
        self._uses, self._names, self._shared_ids, self.unsavable = uses, names, shared_ids, unsavable
        del self.warnings[warning_count:]

    def _record(self, layer, kind, source, note="", pairs=()):
        self.origins[id(layer)] = LayerOrigin(layer, kind, source, note, list(pairs))

    def _name_for_use(self, layer) -> str:
        uses = self._uses.get(id(layer), 0) + 1
        self._uses[id(layer)] = uses
        return self._unique_name(layer.name if uses == 1 else f"{layer.name}_use{uses}")

    def _unique_name(self, base: str) -> str:
        base = base.replace("/", "_")
        name, suffix = base, 1
        while name in self._names:
            name = f"{base}_{suffix}"
            suffix += 1
        self._names.add(name)
        return name


def layer_source(layer) -> str:
    return f"{layer.name} ({type(layer).__name__})"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(err) -> str:
    """The first line that says what went wrong: Keras wraps an error raised in call() as
    "Exception encountered when calling X.call().", then the real message on a line of its own."""
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
