"""Models over protobuf's 2 GB limit.

(a) Before: four 12288×12288 float32 Gemms (2.4 GB of weights, in an external data file), each
        followed by a BatchNormalization, as two Gemm→BN→Relu→Gemm→BN pairs with a Tanh between.
    After:  `prequant equalize` folds every BN and scales both pairs; the output (written with
        external data) loads with onnx.load and onnxruntime computes what the input did (1e-4).
(b) Before: a single-file .onnx whose protobuf is over 2 GB (crafted at the wire level as a
        sparse file: the onnx API refuses to write one).
    After:  a one-line ModelFormatError telling to save the model with external data; the tool
        does not read the 2 GB first (its peak memory stays small).
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import prequant
import prequant.onnx
from pq_onnx_helpers import IR_VERSION, max_rel_err, op_counts, run_cli, run_ort

WIDTH = 12288           # 4 Gemms of WIDTH² float32 = 2.25 GiB
GIB = 1 << 30


def _need(memory_gib: float, disk_gib: float, where) -> None:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if available < memory_gib * GIB:
        pytest.skip(f"needs {memory_gib} GiB of free memory, {available / GIB:.1f} GiB available")
    if shutil.disk_usage(where).free < disk_gib * GIB:
        pytest.skip(f"needs {disk_gib} GiB of free disk space in {where}")


def _external(name: str, array: np.ndarray, data_file, location: str) -> TensorProto:
    """A TensorProto whose data is appended to `data_file` (never held in a protobuf)."""
    offset = data_file.tell()
    array.tofile(data_file)
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        t.external_data.add(key=k, value=v)
    return t


def _write_big_model(path, rng) -> None:
    location = path.name + ".weights"
    nodes, inits = [], []
    h = "x"
    with open(path.parent / location, "wb") as data:
        for i in range(4):
            # Random columns repeated 8 times (random numbers for 2.4 GB take long to draw),
            # rows scaled unequally: channel ranges differ in both directions.
            block = rng.standard_normal((WIDTH, WIDTH // 8), dtype=np.float32) / np.float32(np.sqrt(WIDTH))
            w = np.tile(block, (1, 8))
            w *= rng.uniform(0.1, 10.0, (WIDTH, 1)).astype(np.float32)
            inits.append(_external(f"w{i}", w, data, location))
            del w
            small = {f"b{i}": rng.normal(0, 0.2, WIDTH), f"gamma{i}": rng.uniform(0.5, 1.5, WIDTH),
                     f"beta{i}": rng.normal(0, 1, WIDTH), f"mean{i}": rng.normal(0, 1, WIDTH),
                     f"var{i}": np.exp(rng.uniform(np.log(1e-2), np.log(10.0), WIDTH))}
            inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in small.items()]
            nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}", transB=1))
            nodes.append(helper.make_node("BatchNormalization", [f"g{i}", f"gamma{i}", f"beta{i}", f"mean{i}",
                                                                 f"var{i}"], [f"bn{i}"], name=f"bn{i}"))
            h = f"bn{i}"
            if i in (0, 2):
                nodes.append(helper.make_node("Relu", [h], [f"r{i}"], name=f"relu{i}"))
                h = f"r{i}"
            elif i == 1:
                nodes.append(helper.make_node("Tanh", [h], ["t1"], name="tanh1"))
                h = "t1"
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, WIDTH])],
                          [helper.make_tensor_value_info(h, TensorProto.FLOAT, [2, WIDTH])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    path.write_bytes(model.SerializeToString())


def test_equalize_model_over_2_gb_with_external_data(cli, tmp_path):
    _need(memory_gib=14, disk_gib=6, where=tmp_path)
    rng = np.random.default_rng(5)
    src, dst = tmp_path / "big.onnx", tmp_path / "out" / "eq.onnx"
    dst.parent.mkdir()
    start = time.monotonic()
    _write_big_model(src, rng)
    feeds = {"x": rng.normal(0, 1, (2, WIDTH)).astype(np.float32)}
    expected = run_ort(src, feeds)
    gc.collect()
    made = time.monotonic()

    proc = run_cli(cli, "equalize", src, "-o", dst, "--no-high-bias", "--json")
    ran = time.monotonic()
    result = json.loads(proc.stdout)
    assert len(result["fold"]["folded"]) == 4
    assert [len(s["pairs"]) for s in result["cls"]["sets"]] == [1, 1]

    assert os.path.getsize(dst) < 1 << 20  # the weights went to external data
    data_files = [p for p in dst.parent.iterdir() if p != dst]
    assert data_files and sum(p.stat().st_size for p in data_files) > 2 * GIB
    out = onnx.load(dst)  # loads the external data too
    assert op_counts(out)["BatchNormalization"] == 0
    assert op_counts(out)["Gemm"] == 4
    assert sum(numpy_helper.to_array(t).nbytes for t in out.graph.initializer) > 2 * GIB
    del out
    gc.collect()
    assert max_rel_err(expected, run_ort(dst, feeds)) < 1e-4
    print(f"write input + ort {made - start:.1f}s, prequant equalize {ran - made:.1f}s, "
          f"check {time.monotonic() - ran:.1f}s")


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """Key and length of a length-delimited field whose payload follows."""
    return _varint(number << 3 | 2) + _varint(payload_len)


def _run_measuring_memory(cli, *args):
    """Runs the tool from a fresh Python process, so that RUSAGE_CHILDREN is the tool's alone;
    returns (CompletedProcess-like, peak resident bytes)."""
    code = ("import json, resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(json.dumps([p.returncode, p.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    proc = subprocess.run([sys.executable, "-c", code, cli, *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=True)
    returncode, stderr, peak_kib = json.loads(proc.stdout)
    return subprocess.CompletedProcess(args, returncode, "", stderr), peak_kib * 1024


def test_single_file_over_2_gb_is_refused_with_the_fix(cli, tmp_path):
    # ModelProto { ir_version 8, opset_import { version 17 }, graph { node Relu(x) -> y,
    #   initializer { dims, data_type FLOAT, name "big", raw_data <2.1 GB of zeros> } } }
    # written as a sparse file: only the headers take disk space.
    n = (2 << 30) // 4 + (32 << 20)  # floats: a bit over 2 GiB of raw data
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu").SerializeToString()
    head = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[n]).SerializeToString()
    init_len = len(head) + len(_field(9, 4 * n)) + 4 * n
    graph_prefix = _field(1, len(relu)) + relu + _field(5, init_len) + head + _field(9, 4 * n)
    graph_len = len(graph_prefix) + 4 * n
    opset = helper.make_opsetid("", 17).SerializeToString()
    prefix = (_varint(1 << 3) + _varint(8) + _field(8, len(opset)) + opset + _field(7, graph_len)
              + graph_prefix)
    src = tmp_path / "huge.onnx"
    with open(src, "wb") as f:
        f.write(prefix)
        f.truncate(len(prefix) + 4 * n)
    assert src.stat().st_size > 2 * GIB

    for cmd in (["inspect", src], ["fold", src, "-o", tmp_path / "o.onnx"]):
        proc, peak = _run_measuring_memory(cli, *cmd)
        assert proc.returncode == 1
        assert re.match(r"^prequant: error: \S.*\n$", proc.stderr), proc.stderr
        for w in ("huge.onnx", "2 GB", "save_as_external_data=True"):
            assert w in proc.stderr, proc.stderr
        assert peak < 512 << 20, f"the tool held {peak >> 20} MB: it read the file before refusing it"
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(prequant.ModelFormatError, match="external data"):
        prequant.onnx.fold_all_batch_norms(src)
