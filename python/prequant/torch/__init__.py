"""PyTorch front end of prequant.

``prepare_model`` turns a model into a flat ``torch.fx.GraphModule`` of modules (functionals
become modules, reused modules are unrolled); ``prequant.torch.modules`` holds the small
modules it uses for tensor ops ``torch.nn`` has no module for.

``prepare_model`` needs torch only: it makes no engine calls and imports no torchvision.
"""

from .prepare import PrepareError, PrepareSummary, prepare_model

__all__ = ["PrepareError", "PrepareSummary", "prepare_model"]
