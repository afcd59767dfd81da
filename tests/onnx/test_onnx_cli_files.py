"""The `prequant` tool's file handling: refusing to overwrite its input, atomic writes, clear
one-line errors on bad input, and models with external data."""

import os
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from pq_onnx_helpers import Builder, max_rel_err, op_counts, run_cli, run_ort

ERROR_LINE = re.compile(r"^prequant: error: \S.*\n$")


def small_model(seed=0):
    b = Builder(seed)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.bn(b.conv(y, 8, 4), 4)
    inputs = {"x": [1, 3, 6, 6]}
    return b.model(inputs, [y]), b.feeds(inputs)


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    assert ERROR_LINE.match(proc.stderr), repr(proc.stderr)
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


def test_version(cli):
    proc = run_cli(cli, "--version")
    assert re.match(r"prequant \d+\.\d+", proc.stdout.strip())


def test_refuses_to_overwrite_input(cli, tmp_path):
    model, feeds = small_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    for cmd in ("fold", "equalize"):
        proc = run_cli(cli, cmd, src, "-o", src, expect_ok=False)
        assert_one_line_error(proc, "--overwrite")
        assert src.read_bytes() == before
    # the same file under another spelling
    proc = run_cli(cli, "fold", src, "-o", tmp_path / "." / "m.onnx", expect_ok=False)
    assert_one_line_error(proc)
    run_cli(cli, "equalize", src, "-o", src, "--overwrite")
    out = onnx.load(src)
    assert op_counts(out)["BatchNormalization"] == 0
    assert not [p for p in os.listdir(tmp_path) if "prequant-" in p], "temporary file left behind"


def test_missing_output_option(cli, tmp_path):
    model, _ = small_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "equalize", src, expect_ok=False)
    assert proc.returncode != 0 and proc.stderr.startswith("prequant: error:")
    proc = run_cli(cli, "equalize", src, "-o", tmp_path / "o.onnx", "--relu6", "sometimes", expect_ok=False)
    assert proc.returncode != 0 and proc.stderr.startswith("prequant: error:")


@pytest.mark.parametrize("case", ["truncated", "random", "empty", "missing", "opset7", "text"])
def test_bad_input_fails_with_one_line(cli, tmp_path, case):
    model, _ = small_model()
    src, dst = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    data = model.SerializeToString()
    words = []
    if case == "truncated":
        src.write_bytes(data[: len(data) // 2])
    elif case == "random":
        src.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "empty":
        src.write_bytes(b"")
        words = ["empty"]
    elif case == "missing":
        words = ["no such file"]
    elif case == "text":
        src.write_text("graph { node { op_type: 'Relu' } }\n")
    else:
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
        m.ir_version = 3
        onnx.save(m, src)
        words = ["opset 7", "13"]
    for cmd in (["inspect", src], ["equalize", src, "-o", dst]):
        proc = run_cli(cli, *cmd, expect_ok=False)
        assert_one_line_error(proc, *words)
    assert not dst.exists()


def test_float16_weights_are_refused(cli, tmp_path):
    b = Builder(3)
    y = b.bn(b.conv("x", 3, 4), 4)
    model = b.model({"x": [1, 3, 5, 5]}, [y])
    for t in model.graph.initializer:
        if t.name.startswith("w"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    src = tmp_path / "h.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "fold", src, "-o", tmp_path / "o.onnx", expect_ok=False)
    assert_one_line_error(proc, "float16", "convert", "float32")


def test_output_directory_missing(cli, tmp_path):
    model, _ = small_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "fold", src, "-o", tmp_path / "nope" / "o.onnx", expect_ok=False)
    assert_one_line_error(proc, "cannot write")


def save_external(model, path):
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".weights", size_threshold=0)


def test_external_data_round_trip(cli, tmp_path):
    model, feeds = small_model(5)
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir()
    outdir.mkdir()
    src, dst = indir / "m.onnx", outdir / "e.onnx"
    save_external(model, src)
    assert (indir / "m.onnx.weights").exists()
    run_cli(cli, "equalize", src, "-o", dst, "--no-high-bias")
    assert (outdir / "e.onnx.data").exists(), os.listdir(outdir)
    onnx.checker.check_model(str(dst))
    out = onnx.load(dst)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(dst, load_external_data=False).graph.initializer)
    assert op_counts(out)["BatchNormalization"] == 0
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4
    # and back again: an output with external data is a valid input
    run_cli(cli, "fold", dst, "-o", outdir / "again.onnx")
    assert max_rel_err(run_ort(src, feeds), run_ort(outdir / "again.onnx", feeds)) < 1e-4


def test_external_data_errors(cli, tmp_path):
    model, _ = small_model(6)
    src = tmp_path / "m.onnx"
    save_external(model, src)
    weights = tmp_path / "m.onnx.weights"
    # offset beyond the end of the data file
    m = onnx.load(src, load_external_data=False)
    victim = m.graph.initializer[0]
    for kv in victim.external_data:
        if kv.key == "offset":
            kv.value = str(weights.stat().st_size + 100)
    bad = tmp_path / "bad_offset.onnx"
    onnx.save(m, bad)
    proc = run_cli(cli, "inspect", bad, expect_ok=False)
    assert_one_line_error(proc, victim.name, "beyond the end")
    # location escaping the model's directory
    m = onnx.load(src, load_external_data=False)
    for kv in m.graph.initializer[0].external_data:
        if kv.key == "location":
            kv.value = "../elsewhere.bin"
    escape = tmp_path / "escape.onnx"
    onnx.save(m, escape)
    assert_one_line_error(run_cli(cli, "inspect", escape, expect_ok=False), "outside")
    # data file missing
    weights.rename(tmp_path / "moved.weights")
    proc = run_cli(cli, "equalize", src, "-o", tmp_path / "o.onnx", expect_ok=False)
    assert_one_line_error(proc, "m.onnx.weights", "does not exist")
    assert not (tmp_path / "o.onnx").exists()


def test_invalid_batch_norm_is_reported(cli, tmp_path):
    model, _ = small_model(7)
    for t in model.graph.initializer:
        if t.name.startswith("var"):
            v = numpy_helper.to_array(t).copy()
            v[2] = -1.0
            t.CopyFrom(numpy_helper.from_array(v, t.name))
            break
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "equalize", src, "-o", dst, expect_ok=False)
    assert_one_line_error(proc, "bn1")
    assert not dst.exists()
    # inspect still summarizes the model, and says why folding would fail
    info = run_cli(cli, "inspect", src, "--json")
    assert "fold_error" in __import__("json").loads(info.stdout)


def test_initializers_in_typed_fields(cli, tmp_path):
    # Initializers stored in float_data instead of raw_data (as onnx.helper.make_tensor writes
    # them) are read and written back correctly.
    model, feeds = small_model(8)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        t.CopyFrom(helper.make_tensor(t.name, onnx.TensorProto.FLOAT, a.shape, a.flatten().tolist()))
        assert not t.raw_data
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    run_cli(cli, "equalize", src, "-o", dst, "--no-high-bias")
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4


def test_external_data_of_input_is_never_overwritten(cli, tmp_path):
    # The input keeps its weights in "out.onnx.data" — the name the output's data file would
    # get. Writing out.onnx must not clobber it.
    model, feeds = small_model(9)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save_model(model, src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="out.onnx.data", size_threshold=0)
    reference = run_ort(src, feeds)
    run_cli(cli, "fold", src, "-o", dst)
    assert max_rel_err(reference, run_ort(src, feeds)) == 0.0  # the input still loads as before
    assert max_rel_err(reference, run_ort(dst, feeds)) < 1e-4
    # rewriting a model in place replaces its own data file
    run_cli(cli, "fold", dst, "-o", dst, "--overwrite")
    assert max_rel_err(reference, run_ort(dst, feeds)) < 1e-4
