"""Helpers for the `prequant` command-line tests: finding and running the tool, building ONNX
models with onnx.helper, comparing onnxruntime outputs, and reading per-channel weight ranges
back out of a written model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8  # onnxruntime reads IR <= 10; opset 17 needs IR >= 8


# ---- the tool ---------------------------------------------------------------------------

def find_cli() -> str | None:
    """The installed `prequant` tool, or PREQUANT_CLI. An explicitly set PREQUANT_CLI wins, so
    that a development build is tested even when an older package is installed."""
    return os.environ.get("PREQUANT_CLI") or shutil.which("prequant")


def run_cli(cli: str, *args, expect_ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([cli, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(
            f"prequant {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def equalize_json(cli: str, src: Path, dst: Path, *extra) -> dict:
    proc = run_cli(cli, "equalize", src, "-o", dst, "--json", *extra)
    return json.loads(proc.stdout)


def opaque_batch_norms(cli: str, path: Path) -> int:
    """Batch norms the ONNX reader could not map (and so no pass can fold)."""
    info = json.loads(run_cli(cli, "inspect", path, "--json").stdout)
    return sum(1 for o in info["opaque"] if o["op_type"] == "BatchNormalization")


# ---- onnxruntime ------------------------------------------------------------------------

def run_ort(path_or_model, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    src = path_or_model if isinstance(path_or_model, (str, Path)) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_rel_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
        scale = max(float(np.abs(x).max()), 1e-12)
        worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) / scale)
    return worst


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


# ---- per-channel ranges of a written model ----------------------------------------------

def _initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def channel_ranges(model: onnx.ModelProto, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(output-channel ranges, input-channel ranges) of the weight of ONNX node `layer`, with
    full (cross-group) channel indices; r[c] = max |W| over all elements of channel c."""
    node = next(n for n in model.graph.node if n.name == layer)
    w = np.abs(_initializers(model)[node.input[1]].astype(np.float64))
    op = node.op_type
    if op == "Conv":
        g = _attr(node, "group", 1)
        o, ig = w.shape[0], w.shape[1]
        out = w.reshape(o, -1).max(axis=1)
        inn = w.reshape(g, o // g, ig, -1).max(axis=(1, 3)).reshape(g * ig)
        return out, inn
    if op == "ConvTranspose":
        g = _attr(node, "group", 1)
        i, og = w.shape[0], w.shape[1]
        inn = w.reshape(i, -1).max(axis=1)
        out = w.reshape(g, i // g, og, -1).max(axis=(1, 3)).reshape(g * og)
        return out, inn
    if op == "Gemm" and _attr(node, "transB", 0):
        return w.max(axis=1), w.max(axis=0)
    if op in ("Gemm", "MatMul"):
        return w.max(axis=0), w.max(axis=1)
    raise AssertionError(f"{layer}: {op} is not a layer")


def check_cls_ranges(model: onnx.ModelProto, cls_result: dict, rtol: float = 1e-3) -> int:
    """For every scaled pair in the JSON result, layer1's output-channel ranges must equal
    layer2's input-channel ranges up to one factor per pair: a pair with a bounded ReLU6 between
    is gauged (its scale vector multiplied by α so every bound is <= 6, gauge_clip_bounds.cpp),
    which multiplies whole weight tensors by one number — also the next pair's first layer.
    Returns the number of pairs checked."""
    checked = 0
    for s in cls_result["sets"]:
        for p in s["pairs"]:
            r1 = channel_ranges(model, p["layer1"])[0]
            r2 = channel_ranges(model, p["layer2"])[1]
            assert r1.shape == r2.shape, (p["layer1"], p["layer2"])
            live = (r1 > 1e-12) & (r2 > 1e-12)
            alpha = np.sqrt(r2[live][0] / r1[live][0]) if live.any() else 1.0
            np.testing.assert_allclose(r1[live] * alpha, r2[live] / alpha, rtol=rtol,
                                       err_msg=f"{p['layer1']} -> {p['layer2']}")
            checked += 1
    return checked


# ---- building models --------------------------------------------------------------------

class Builder:
    """A tiny DSL over onnx.helper for test models with realistic batch-norm statistics."""

    def __init__(self, seed: int = 0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = Counter()
        self.dtype = dtype
        self.elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE

    def name(self, base: str) -> str:
        self.count[base] += 1
        return f"{base}{self.count[base]}"

    def init(self, base: str, array) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=self.dtype), name))
        return name

    def node(self, op: str, inputs, outputs=None, name=None, domain=None, **attrs) -> str:
        name = name or self.name(op.lower())
        outputs = outputs or [name + "_out"]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, domain=domain, **attrs))
        return outputs[0]

    def weight(self, shape, fan_in):
        return self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)

    def conv(self, x, cin, cout, k=3, rank=2, groups=1, pad=True, bias=True, stride=1, name=None):
        w = self.init("w", self.weight((cout, cin // groups) + (k,) * rank, cin // groups * k**rank))
        ins = [x, w]
        if bias:
            ins.append(self.init("b", self.rng.normal(0, 0.2, cout)))
        attrs = dict(group=groups, strides=[stride] * rank, kernel_shape=[k] * rank)
        if pad and k > 1:
            attrs["pads"] = [k // 2] * (2 * rank)
        return self.node("Conv", ins, name=name or self.name("conv"), **attrs)

    def conv_transpose(self, x, cin, cout, k=4, stride=2, groups=1, pads=1, rank=2, name=None):
        w = self.init("w", self.weight((cin, cout // groups) + (k,) * rank, cin // groups * k**rank))
        b = self.init("b", self.rng.normal(0, 0.2, cout))
        return self.node("ConvTranspose", [x, w, b], name=name or self.name("deconv"), group=groups,
                         strides=[stride] * rank, pads=[pads] * (2 * rank), kernel_shape=[k] * rank)

    def bn(self, x, c, name=None):
        gamma = self.rng.uniform(0.5, 1.5, c) * self.rng.choice([-1.0, 1.0], c)
        beta = self.rng.normal(0.0, 1.0, c)
        mean = self.rng.normal(0.0, 1.0, c)
        var = np.exp(self.rng.uniform(np.log(1e-2), np.log(10.0), c))
        ins = [x, self.init("gamma", gamma), self.init("beta", beta), self.init("mean", mean),
               self.init("var", var)]
        return self.node("BatchNormalization", ins, name=name or self.name("bn"), epsilon=1e-5)

    def relu(self, x):
        return self.node("Relu", [x])

    def clip(self, x, lo=0.0, hi=6.0, constant_nodes=False):
        if constant_nodes:
            lo_t = self.node("Constant", [], value=numpy_helper.from_array(np.array(lo, self.dtype)))
            hi_t = self.node("Constant", [], value=numpy_helper.from_array(np.array(hi, self.dtype)))
        else:
            lo_t, hi_t = self.init("clip_min", np.array(lo)), self.init("clip_max", np.array(hi))
        return self.node("Clip", [x, lo_t, hi_t])

    def leaky(self, x, alpha=0.1):
        return self.node("LeakyRelu", [x], alpha=alpha)

    def prelu(self, x, c, rank):
        slope = self.rng.uniform(0.05, 0.3, (c,) + (1,) * rank) if c else np.array([0.2])
        return self.node("PRelu", [x, self.init("slope", slope)])

    def pad(self, x, pads, mode="constant"):
        p = numpy_helper.from_array(np.array(pads, dtype=np.int64), self.name("pads"))
        self.inits.append(p)
        return self.node("Pad", [x, p.name], mode=mode)

    def gemm(self, x, fin, fout, trans_b=1, bias=True, name=None):
        shape = (fout, fin) if trans_b else (fin, fout)
        ins = [x, self.init("w", self.weight(shape, fin))]
        if bias:
            ins.append(self.init("b", self.rng.normal(0, 0.2, fout)))
        return self.node("Gemm", ins, name=name or self.name("gemm"), transB=trans_b)

    def linear_matmul(self, x, fin, fout, add=True, name=None):
        name = name or self.name("matmul")
        y = self.node("MatMul", [x, self.init("w", self.weight((fin, fout), fin))], name=name)
        if add:
            y = self.node("Add", [y, self.init("b", self.rng.normal(0, 0.2, fout))], name=name + "_add")
        return y

    def model(self, inputs: dict, outputs: list, opset: int = 17, extra_opsets=(),
              infer_shapes: bool = True) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(n, self.elem, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, self.elem, None) for n in outputs], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]
                              + [helper.make_opsetid(d, v) for d, v in extra_opsets])
        m.ir_version = IR_VERSION
        # Graph outputs need a shape for onnx.checker: take it from one onnxruntime run.
        zeros = {n: np.zeros(s, self.dtype) for n, s in inputs.items()}
        for vi, y in zip(m.graph.output, run_ort(m, zeros)):
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, self.elem, list(y.shape)))
        if infer_shapes:
            m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m)
        return m

    def feeds(self, inputs: dict, scale: float = 1.0) -> dict:
        return {n: (self.rng.normal(0, scale, s)).astype(self.dtype) for n, s in inputs.items()}
