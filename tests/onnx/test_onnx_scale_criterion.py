"""--scale-criterion (CLI) / scale_criterion= (prequant.onnx.equalize_model): same option, same
weights; the output unchanged under onnxruntime; the scales differ from the weight criterion's."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prequant.onnx import equalize_model
from pq_onnx_helpers import equalize_json, max_rel_err, run_ort


def _model() -> onnx.ModelProto:
    """x → Conv(3→8, 3x3) → BN → Clip(0, 6) → Conv(8→6, 1x1) → BN → Relu → Conv(6→4, 1x1)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def add(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(i, x, cin, cout, k):
        nodes.append(helper.make_node("Conv", [x, add(f"w{i}", rng.uniform(-1, 1, (cout, cin, k, k))),
                                               add(f"b{i}", rng.normal(size=cout))], [f"c{i}"], name=f"conv{i}",
                                      pads=[k // 2] * 4))
        return f"c{i}"

    def bn(i, x, c):
        nodes.append(helper.make_node(
            "BatchNormalization",
            [x, add(f"g{i}", rng.choice([-1, 1], c) * rng.uniform(0.2, 2, c)), add(f"be{i}", rng.normal(size=c)),
             add(f"m{i}", rng.normal(size=c)), add(f"v{i}", 10 ** rng.uniform(-2, 1, c))], [f"n{i}"], name=f"bn{i}"))
        return f"n{i}"

    y = bn(0, conv(0, "x", 3, 8, 3), 8)
    nodes.append(helper.make_node("Clip", [y, add("lo", 0.0), add("hi", 6.0)], ["a0"], name="relu6"))
    y = bn(1, conv(1, "a0", 8, 6, 1), 6)
    nodes.append(helper.make_node("Relu", [y], ["a1"], name="relu"))
    conv(2, "a1", 6, 4, 1)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(m: onnx.ModelProto) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def test_cli_and_python_agree_and_keep_the_output(cli, tmp_path: Path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    x = {"x": np.random.default_rng(1).normal(size=(1, 3, 6, 6)).astype(np.float32) * 2}
    before = run_ort(src, x)
    outs = {}
    for criterion in ("weights", "activations"):
        dst = tmp_path / f"{criterion}.onnx"
        info = equalize_json(cli, src, dst, "--scale-criterion", criterion)
        assert len(info["cls"]["sets"]) == 2
        assert max_rel_err(before, run_ort(dst, x)) < 1e-4
        outs[criterion] = _weights(onnx.load(dst))
        py, _ = equalize_model(_model(), scale_criterion=criterion)
        for name, w in _weights(py).items():
            np.testing.assert_allclose(w, outs[criterion][name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert not np.allclose(outs["weights"]["w0"], outs["activations"]["w0"])


def test_unknown_criterion_is_refused(cli, tmp_path: Path):
    from pq_onnx_helpers import run_cli

    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    proc = run_cli(cli, "equalize", src, "-o", tmp_path / "o.onnx", "--scale-criterion", "both", expect_ok=False)
    assert proc.returncode != 0 and "scale-criterion" in proc.stderr + proc.stdout
