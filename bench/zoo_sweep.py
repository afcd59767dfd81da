"""The zoo sweep as a table: per model, what prepare_model + equalize_model does through PyTorch
against what the `prequant` CLI does on the same model's ONNX export.

    PREQUANT_CLI=build/cpp/prequant python bench/zoo_sweep.py [--models tv:resnet18 timm:...]

Prints markdown: model, BNs, BNs folded (torch / onnx), CLS sets scaled (torch / onnx), the
reasons for the differences (keys of tests/torch/torch_zoo_sweep.REASONS, with counts), and the
relative output error of the PyTorch run in float64. The runs are tests/torch/torch_zoo_sweep.py's
(the same the zoo test checks): random weights, randomized BN statistics, 64×64 inputs."""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "torch"))

import torch  # noqa: E402

import torch_zoo_sweep as zoo  # noqa: E402


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=zoo.MODELS)
    args = ap.parse_args()
    cli = zoo.find_cli()
    if not cli:
        sys.exit("set PREQUANT_CLI or put the prequant tool on PATH")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"commit {commit()}, torch {torch.__version__}\n")
    print("| model | BNs | BNs folded torch / onnx | sets scaled torch / onnx | differences (reason: count) | max rel err |")
    print("|---|---:|---:|---:|---|---:|")
    totals = collections.Counter()
    for name in args.models:
        try:
            s = zoo.run(name, cli)
        except Exception as exc:  # a model that fails is a row, not the end of the table
            print(f"| {name} | | | | failed: {type(exc).__name__}: {str(exc)[:80]} | |")
            continue
        (tf, of), (ts, os_) = s.folded, s.sets
        reasons = collections.Counter(d[2] for d in s.fold_diff + s.cls_diff)
        why = ", ".join(f"{k}: {v}" for k, v in reasons.most_common(3)) or "—"
        if s.onnx_error:
            why = f"CLI failed: {s.onnx_error[:60]}"
        print(f"| {name} | {s.batch_norms} | {tf} / {of} | {ts} / {os_} | {why} | {s.rel_err:.1e} |", flush=True)
        totals.update(bns=s.batch_norms, tf=tf, of=of, ts=ts, os=os_, models=1)
    t = totals
    print(f"| **{t['models']} models** | {t['bns']} | {t['tf']} / {t['of']} | {t['ts']} / {t['os']} | | |")


if __name__ == "__main__":
    main()
