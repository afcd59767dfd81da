"""prequant._core lives in one process with torch, tensorflow, onnx and onnxruntime.

Two copies of ONNX's generated schema registered in one protobuf descriptor pool abort the
process with "File already exists in database: onnx/onnx-ml.proto" (onnx #2940, onnx-mlir
#2413, tensorflow-onnx #927); prequant compiles the schema under its own package name and
links its copy privately. Every order of the five imports runs in a fresh interpreter, and each
then uses what it imported (prequant parses and writes a model while onnx and onnxruntime hold
theirs). A framework that is not installed is skipped inside the subprocess.

By default the orders cover every set of frameworks imported before prequant._core, each in
two inner orders (27 orders); PREQUANT_IMPORT_ORDERS=all runs all 120 permutations of the five
imports (itertools.permutations), PREQUANT_IMPORT_ORDERS=<n> an evenly spaced sample of n. The
subprocesses run concurrently (one per CPU) from a module-level pool; each test waits for its
own order.
"""

import concurrent.futures
import itertools
import os
import subprocess
import sys
import textwrap

import pytest

MODULES = ("prequant._core", "torch", "tensorflow", "onnx", "onnxruntime")

CHILD = textwrap.dedent(
    r"""
    import importlib, sys

    order = sys.argv[1:]
    loaded = {}
    for name in order:
        try:
            loaded[name] = importlib.import_module(name)
        except ImportError as e:
            if name == "prequant._core":
                raise
            print(f"SKIP {name}: {e}")

    core = loaded["prequant._core"]
    onnx = loaded.get("onnx")
    if onnx is not None:
        from onnx import TensorProto, helper, numpy_helper
        import numpy as np

        w = np.ones((2, 3, 1, 1), np.float32)
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
            [numpy_helper.from_array(w, "w")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        model = core.OnnxModel.from_bytes(m.SerializeToString())
        data = model.to_bytes()
        onnx.checker.check_model(onnx.load_from_string(data))
        ort = loaded.get("onnxruntime")
        if ort is not None:
            sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.ones((1, 3, 2, 2), np.float32)})
    else:
        g = core.Graph()
        g.add_activation("r", "relu", "x", "y")
        g.lint()
    torch = loaded.get("torch")
    if torch is not None:
        torch.ones(2).sum().item()
    tf = loaded.get("tensorflow")
    if tf is not None:
        float(tf.reduce_sum(tf.ones([2])))
    print("OK")
    """
)


def _covering_orders():
    """Every set of frameworks that can be loaded before prequant._core, each in its listed and
    its reversed order (which copy of a symbol wins depends on who loads first), the rest after.
    What is loaded before the extension is what decides which symbols it binds to."""
    frameworks = MODULES[1:]
    orders = []
    for k in range(len(frameworks) + 1):
        for before in itertools.combinations(frameworks, k):
            after = tuple(f for f in frameworks if f not in before)
            for first in (before, before[::-1]):
                order = first + ("prequant._core",) + (after if first == before else after[::-1])
                if order not in orders:
                    orders.append(order)
    return orders


def _orders():
    choice = os.environ.get("PREQUANT_IMPORT_ORDERS", "")
    if choice == "all":
        return list(itertools.permutations(MODULES))
    if choice:
        everything = list(itertools.permutations(MODULES))
        n = max(1, min(int(choice), len(everything)))
        return [everything[i * len(everything) // n] for i in range(n)]
    return _covering_orders()


ORDERS = _orders()


def _run(order):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-c", CHILD, *order], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def runs():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    futures = {order: pool.submit(_run, order) for order in ORDERS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(m.split(".")[-1] for m in o) for o in ORDERS])
def test_import_order(order, runs):
    proc = runs[order].result()
    detail = f"order {order}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "File already exists in database" not in proc.stderr, detail
    assert proc.returncode == 0, detail
    assert "OK" in proc.stdout.splitlines(), detail


def test_import_prequant_is_light():
    code = (
        "import sys, prequant, prequant._core\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
