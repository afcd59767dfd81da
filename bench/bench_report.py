"""What the accuracy benches share, without importing a framework (the TFLite bench's process must
not import torch): output SQNR, its table format, and writing the markdown report."""
from __future__ import annotations

import math
import os

import numpy as np


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Output SQNR of `out` against `ref` in dB (inf when they are equal), in float64."""
    err = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return math.inf if err == 0 else 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


def fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}" if v < 100 else ">100"


def write_report(text: str, path: str) -> None:
    """Print the report and write it to `path` (its folder created)."""
    print()
    print(text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
