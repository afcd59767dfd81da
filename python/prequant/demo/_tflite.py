"""TFLite full-integer INT8 for Keras models: convert, run, and count the ops that matter.

Shared by the Keras demo (``python -m prequant.demo --keras``), bench/accuracy_efficientnet_lite0_tflite.py
and bench/relu6_bound_tflite_mobilenetv2.py (which loads this file by path, so its "before" side
can import an older prequant). Imports TensorFlow, never prequant or torch.

Conversion: ``tf.lite.TFLiteConverter.from_keras_model``, ``Optimize.DEFAULT``, a representative
dataset (the calibration images, one per step), int8 builtin ops only (float input and output,
quantized inside). Per-channel weights are the converter's default; per-tensor needs its private
attribute ``_experimental_disable_per_channel`` (TFLite has no public switch; it may change
without notice). Evaluation: ``tf.lite.Interpreter``, one image per invoke (TF 2.20+ warns that
it moves to the ai_edge_litert package; that package is not a dependency, the warning is muted).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings

import numpy as np


@contextlib.contextmanager
def _converter_output_held():
    """The converter prints the exported SavedModel's signature (Python, stdout) and its MLIR
    notes (C++, stderr) for every model: hold both in a file, show them only if it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read()[-5000:].decode(errors="replace"))


def convert_int8(model, calibration: np.ndarray, *, per_tensor: bool = False) -> bytes:
    """The full-integer .tflite flatbuffer of a Keras model, calibrated on `calibration` (NHWC)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if per_tensor:
        converter._experimental_disable_per_channel = True  # private: TFLite has no public switch
    with _converter_output_held():
        return converter.convert()


def run_tflite(content: bytes, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """The model's (float) output for every row of `x`, one invoke per row."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "tf.lite.Interpreter is deprecated ..."
        interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[None].astype(inp["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(outputs)


def ops_with_fused_activation(content: bytes) -> list[tuple[str, str | None]]:
    """[(builtin op name, fused activation name or None)] of a .tflite flatbuffer, in order.
    Reads TF's own flatbuffer schema module (no public API exposes fused activations)."""
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.Model.GetRootAs(content, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    acts = {v: k for k, v in vars(fb.ActivationFunctionType).items() if not k.startswith("_")}
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        act = None
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            options = fb.Conv2DOptions() if name == "CONV_2D" else fb.DepthwiseConv2DOptions()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            act = acts[options.FusedActivationFunction()]
        out.append((name, act))
    return out


def describe_ops(content: bytes) -> str:
    """'R/C convs fused RELU6, MINIMUM M': how many of the C (depthwise) convs carry a fused
    RELU6 and how many MINIMUM ops (prequant's per-channel ReLU6 bounds) the model has."""
    ops = ops_with_fused_activation(content)
    convs = [act for _, act in ops if act is not None]
    mins = sum(name == "MINIMUM" for name, _ in ops)
    return f"{sum(a == 'RELU6' for a in convs)}/{len(convs)} convs fused RELU6, MINIMUM {mins}"
