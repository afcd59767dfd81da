"""Write the seed corpus for the ONNX reader fuzzer (cpp/fuzz/fuzz_onnx_reader.cpp).

    python3 cpp/fuzz/make_seed_corpus.py OUT_DIR [--no-torch] [--no-torchvision]

Two kinds of seeds, each one .onnx file (model bytes only; external data is never used, the
fuzzer reads no files):

* real exports: small torch models exported the way users export them (TorchScript exporter,
  opset 17, do_constant_folding=False so BatchNormalization survives): conv/BN/ReLU6,
  depthwise, linear, ConvTranspose, 1-d and 3-d convolutions, and torchvision's mobilenet_v2 at
  a small width;
* onnx.helper-built models reaching the reader's other paths: Gemm with and without transB,
  MatMul + Add, Clip in both forms, LeakyRelu, PRelu, Pad, grouped ConvTranspose, shared
  weights, a subgraph (If), float16/double/int64 tensors, float_data instead of raw_data,
  sparse initializers, model-local functions, the opset bounds.

The corpus is generated at run time (scripts/sanitize.sh), never committed. Weights are random
and small: the fuzzer cares about structure, and small seeds mutate fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


# ---- onnx.helper-built seeds ---------------------------------------------------------------

class Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def init(self, base: str, array, dtype=np.float32) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k=(3, 3), group=1, bias=True, **attrs) -> str:
        w = self.init("w", self.rng.standard_normal((cout, cin // group, *k)))
        ins = [x, w] + ([self.init("b", self.rng.standard_normal(cout))] if bias else [])
        return self.node("Conv", ins, group=group, **attrs)

    def conv_t(self, x: str, cin: int, cout: int, k=(2, 2), group=1, **attrs) -> str:
        w = self.init("wt", self.rng.standard_normal((cin, cout // group, *k)))
        return self.node("ConvTranspose", [x, w, self.init("b", self.rng.standard_normal(cout))],
                         group=group, **attrs)

    def bn(self, x: str, c: int, **attrs) -> str:
        r = self.rng
        ins = [x, self.init("gamma", 0.5 + r.random(c)), self.init("beta", r.standard_normal(c)),
               self.init("mean", r.standard_normal(c)), self.init("var", 0.1 + r.random(c))]
        return self.node("BatchNormalization", ins, epsilon=1e-5, **attrs)

    def model(self, x_shape, y: str, opset: int = OPSET, inputs=None, **kw) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g",
            inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                 ir_version=IR_VERSION, **kw)


def helper_seeds() -> dict[str, onnx.ModelProto]:
    seeds: dict[str, onnx.ModelProto] = {}

    # conv - BN - relu6 (Clip with inputs) - depthwise - BN - relu - conv
    b = Builder(1)
    y = b.node("Clip", [b.bn(b.conv("x", 4, 8), 8), b.init("lo", 0.0), b.init("hi", 6.0)])
    y = b.node("Relu", [b.bn(b.conv(y, 8, 8, group=8, bias=False, pads=[1, 1, 1, 1]), 8)])
    seeds["conv_bn_clip_dw"] = b.model([1, 4, 8, 8], b.conv(y, 8, 4, k=(1, 1)))

    # Clip with only a max, LeakyRelu, PRelu, Pad between convs
    b = Builder(2)
    y = b.node("Clip", [b.conv("x", 3, 6), "", b.init("hi", 6.0)])
    y = b.node("LeakyRelu", [b.conv(y, 6, 6)], alpha=0.1)
    y = b.node("PRelu", [b.conv(y, 6, 6), b.init("slope", b.rng.random((6, 1, 1)))])
    y = b.node("Pad", [y, b.init("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)], mode="constant")
    seeds["clip_leaky_prelu_pad"] = b.model([1, 3, 8, 8], b.conv(y, 6, 3))

    # pooling, flatten, Gemm (transB=1), relu, Gemm (transB=0)
    b = Builder(3)
    y = b.node("GlobalAveragePool", [b.node("Relu", [b.bn(b.conv("x", 3, 8), 8)])])
    y = b.node("Flatten", [y], axis=1)
    y = b.node("Gemm", [y, b.init("fc1", b.rng.standard_normal((6, 8))), b.init("fb1", np.zeros(6))],
               transB=1)
    y = b.node("Relu", [y])
    y = b.node("Gemm", [y, b.init("fc2", b.rng.standard_normal((6, 4))), b.init("fb2", np.ones(4))])
    seeds["gemm"] = b.model([1, 3, 6, 6], y)

    # MatMul + Add and MatMul alone on rank 3 (transformer style), BN1d on rank 2
    b = Builder(4)
    y = b.node("MatMul", ["x", b.init("m1", b.rng.standard_normal((8, 16)))])
    y = b.node("Add", [y, b.init("a1", b.rng.standard_normal(16))])
    y = b.node("Relu", [y])
    y = b.node("MatMul", [y, b.init("m2", b.rng.standard_normal((16, 8)))])
    seeds["matmul_add"] = b.model([2, 5, 8], y)

    # ConvTranspose (grouped) after conv, BN after it, 1-d and 3-d convs
    b = Builder(5)
    y = b.node("Relu", [b.conv("x", 4, 4)])
    y = b.bn(b.conv_t(y, 4, 8, group=2, strides=[2, 2]), 8)
    seeds["conv_transpose"] = b.model([1, 4, 5, 5], b.conv(b.node("Relu", [y]), 8, 2))
    b = Builder(6)
    y = b.node("Relu", [b.bn(b.conv("x", 2, 4, k=(3,)), 4)])
    seeds["conv1d"] = b.model([1, 2, 16], b.conv(y, 4, 2, k=(1,)))
    b = Builder(7)
    y = b.node("Relu", [b.bn(b.conv("x", 2, 4, k=(1, 3, 3)), 4)])
    seeds["conv3d"] = b.model([1, 2, 3, 6, 6], b.conv(y, 4, 2, k=(1, 1, 1)))

    # a weight shared by two convs (unroll), an Identity on a weight, a Constant weight
    b = Builder(8)
    w = b.init("shared", b.rng.standard_normal((4, 4, 1, 1)))
    y1 = b.node("Relu", [b.node("Conv", ["x", w])])
    y2 = b.node("Conv", [y1, w])
    wid = b.node("Identity", [b.init("w", b.rng.standard_normal((4, 4, 1, 1)))])
    b.nodes.append(helper.make_node(
        "Constant", [], ["cw"], name="cw",
        value=numpy_helper.from_array(b.rng.standard_normal((4, 4, 1, 1)).astype(np.float32))))
    y3 = b.node("Conv", [b.node("Relu", [b.node("Conv", [y2, wid])]), "cw"])
    seeds["shared_identity_constant"] = b.model([1, 4, 4, 4], y3)

    # weights that are no initializers: a graph input, a DequantizeLinear output, a BN mean fed
    # at run time (the layers stay opaque with a reason)
    b = Builder(16)
    y = b.node("Relu", [b.bn(b.node("Conv", ["x", "w_in"]), 4)])
    wq = b.init("wq", b.rng.integers(-127, 128, (4, 4, 1, 1)), np.int8)
    y = b.node("Conv", [y, b.node("DequantizeLinear", [wq, b.init("ws", 0.02)])])
    y = b.node("BatchNormalization", [y, b.init("g", np.ones(4)), b.init("b", np.zeros(4)), "mean_in",
                                      b.init("v", np.ones(4))])
    y = b.node("MatMul", [y, b.node("Identity", ["w_in2"])])
    inputs = {"x": [1, 4, 4, 4], "w_in": [4, 4, 1, 1], "mean_in": [4], "w_in2": [4, 4]}
    seeds["weights_not_initializers"] = b.model(None, y, inputs=[
        helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()])

    # an If whose branches hold convs reading an outer initializer and the outer activation
    b = Builder(9)
    y = b.node("Relu", [b.conv("x", 3, 3)])
    outer_w = b.init("outer_w", b.rng.standard_normal((3, 3, 1, 1)))
    branches = []
    for k in range(2):
        sb = Builder(20 + k)
        sy = sb.node("Conv", [y, outer_w])
        sy = sb.conv(sb.node("Relu", [sy]), 3, 3, k=(1, 1))
        branches.append(helper.make_graph(sb.nodes, f"branch{k}", [],
                                          [helper.make_tensor_value_info(sy, TensorProto.FLOAT, None)],
                                          sb.inits))
    cond = b.init("cond", True, np.bool_)
    b.nodes.append(helper.make_node("If", [cond], ["if_out"], name="if",
                                    then_branch=branches[0], else_branch=branches[1]))
    seeds["if_subgraph"] = b.model([1, 3, 4, 4], "if_out")

    # data types: double model, float16 weights, float_data instead of raw_data, int64 attrs
    b = Builder(10)
    y = b.node("Relu", [b.bn(b.conv("x", 2, 4), 4)])
    m = b.model([1, 2, 5, 5], b.conv(y, 4, 2))
    for t in m.graph.initializer:
        arr = numpy_helper.to_array(t)
        t.ClearField("raw_data")
        t.float_data.extend(arr.ravel().tolist())
    seeds["float_data"] = m
    b = Builder(11)
    y = b.node("Relu", [b.conv("x", 2, 4)])
    m = b.model([1, 2, 5, 5], b.conv(y, 4, 2))
    for t in m.graph.initializer:
        arr = numpy_helper.to_array(t).astype(np.float16)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    seeds["float16"] = m
    b = Builder(12)
    w1 = b.init("w", b.rng.standard_normal((4, 2, 3, 3)), np.float64)
    w2 = b.init("w", b.rng.standard_normal((2, 4, 1, 1)), np.float64)
    y = b.node("Conv", [b.node("Relu", [b.node("Conv", ["x", w1])]), w2])
    seeds["double"] = b.model(None, y, inputs=[helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                            [1, 2, 5, 5])])

    # a sparse initializer, a model-local function, metadata, the opset bounds
    b = Builder(13)
    y = b.node("Relu", [b.conv("x", 2, 4)])
    y = b.node("LocalRelu", [y])
    b.nodes[-1].domain = "local"
    m = b.model([1, 2, 5, 5], b.conv(y, 4, 2), functions=[helper.make_function(
        "local", "LocalRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", OPSET)])])
    m.opset_import.append(helper.make_opsetid("local", 1))
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp"),
        numpy_helper.from_array(np.array([0, 3], np.int64), "sp_idx"), [4]))
    helper.set_model_props(m, {"author": "fuzz"})
    seeds["function_sparse"] = m
    # well-formed protobufs of invalid models: channel counts that disagree between layers and
    # with a BN, more groups than channels, zero-size weights (the engine must refuse or skip)
    def damaged(name, shapes, ops, x_shape):
        b = Builder(15)
        w = {k: b.init(k, b.rng.standard_normal(shape)) for k, shape in shapes.items()}
        y = "x"
        for op, ins, attrs in ops:
            y = b.node(op, [y] + [w[i] for i in ins], **attrs)
        seeds[name] = b.model(x_shape, y)
    damaged("bad_cls_channels", {"W1": (8, 3, 1, 1), "W2": (4, 5, 1, 1)},
            [("Conv", ["W1"], {}), ("Relu", [], {}), ("Conv", ["W2"], {})], [1, 3, 4, 4])
    damaged("bad_bn_channels", {"W1": (8, 3, 1, 1), "g": (4,), "b": (4,), "m": (4,), "v": (4,)},
            [("Conv", ["W1"], {}), ("BatchNormalization", ["g", "b", "m", "v"], {})], [1, 3, 4, 4])
    damaged("bad_groups", {"W1": (8, 3, 1, 1), "W2": (4, 3, 1, 1)},
            [("Conv", ["W1"], {}), ("Relu", [], {}), ("Conv", ["W2"], {"group": 4})], [1, 3, 4, 4])
    damaged("zero_channels", {"W1": (0, 3, 1, 1), "W2": (4, 0, 1, 1)},
            [("Conv", ["W1"], {}), ("Relu", [], {}), ("Conv", ["W2"], {})], [1, 3, 4, 4])
    for opset in (13, 20):
        b = Builder(14)
        y = b.node("Relu", [b.bn(b.conv("x", 2, 4), 4)])
        seeds[f"opset{opset}"] = b.model([1, 2, 5, 5], b.conv(y, 4, 2), opset=opset)
    return seeds


# ---- torch exports -------------------------------------------------------------------------

def torch_seeds(out: Path, torchvision_too: bool) -> list[str]:
    import torch
    from torch import nn

    torch.manual_seed(0)

    def bn_stats(model: nn.Module) -> nn.Module:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.weight.uniform_(-1.5, 1.5)
                    m.bias.normal_()
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.05, 5.0)
        return model.eval()

    models: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
        "torch_conv_bn_relu6_dw": (nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)), (1, 3, 8, 8)),
        "torch_linear": (nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.LeakyReLU(0.1),
            nn.Linear(8, 4)), (2, 8)),
        "torch_conv_transpose": (nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
            nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2), nn.BatchNorm2d(4), nn.PReLU(4),
            nn.Conv2d(4, 2, 1)), (1, 3, 6, 6)),
        "torch_conv1d": (nn.Sequential(
            nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.ZeroPad1d(1),
            nn.Conv1d(6, 6, 3, groups=6), nn.ReLU(), nn.Conv1d(6, 2, 1)), (1, 2, 16)),
        "torch_conv3d": (nn.Sequential(
            nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU6(),
            nn.ConvTranspose3d(4, 4, 2, stride=2), nn.ReLU(), nn.Conv3d(4, 2, 1)), (1, 2, 3, 4, 4)),
        "torch_pool_flatten_linear": (nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 4)), (1, 3, 8, 8)),
    }
    if torchvision_too:
        import torchvision

        models["torchvision_mobilenet_v2"] = (
            torchvision.models.mobilenet_v2(weights=None, width_mult=0.1, num_classes=8,
                                            round_nearest=2), (1, 3, 32, 32))
    written = []
    for name, (model, shape) in models.items():
        bn_stats(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(*shape),), str(out / f"{name}.onnx"),
                              opset_version=OPSET, dynamo=False, do_constant_folding=False,
                              input_names=["input"], output_names=["output"])
        written.append(name)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-torch", action="store_true", help="only the onnx.helper-built seeds")
    ap.add_argument("--no-torchvision", action="store_true", help="skip mobilenet_v2")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, model in helper_seeds().items():
        (args.out / f"{name}.onnx").write_bytes(model.SerializeToString())
        names.append(name)
    if not args.no_torch:
        names += torch_seeds(args.out, not args.no_torchvision)
    for name in names:  # every seed must be a model onnx itself reads (and not use external data)
        onnx.load(str(args.out / f"{name}.onnx"), load_external_data=False)
    sizes = sorted((args.out / f"{n}.onnx").stat().st_size for n in names)
    print(f"wrote {len(names)} seeds to {args.out} ({sizes[0]}..{sizes[-1]} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
