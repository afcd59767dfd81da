"""The Keras EfficientNet-Lite0 port (prequant/demo/efficientnet_lite_keras.py) computes what the
PyTorch definition (prequant/demo/efficientnet_lite.py, TF 'SAME' padding) computes.

Before: the Keras demo had no Lite0; nothing showed that a torch state dict loaded into a Keras
        model (kernel transposes, depthwise layout, BN statistics, dense transpose) gives the
        torch model's function.
After:  a child process (torch is never imported into this TensorFlow process) builds the torch
        model with random weights and random BN statistics (var in [1e-2, 10], non-zero mean,
        negative gamma), runs a 64x64 batch and hands back state dict, input and logits; the
        Keras port loaded with that state dict gives the same logits to 1e-4 relative.
        A state dict with a tensor missing or left over is refused with the layer's name.
"""

import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import prequant
import pytest
from prequant.demo.efficientnet_lite_keras import efficientnet_lite_keras, load_torch_state_dict

SIZE = 64

_TORCH_REFERENCE = """
import io, sys
import numpy as np
import torch
from prequant.demo.efficientnet_lite import EfficientNetLite

torch.manual_seed(0)
model = EfficientNetLite().eval()
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 3 - 2))
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5 + 0.2)
            m.weight.copy_(torch.randn(c, generator=g))  # about half negative
            m.bias.copy_(torch.randn(c, generator=g) * 0.5 + 0.5)
    x = torch.randn(2, 3, %d, %d, generator=g)
    y = model(x)
arrays = {"sd." + k: v.numpy() for k, v in model.state_dict().items()}
buf = io.BytesIO()
np.savez(buf, x=x.numpy(), y=y.numpy(), **arrays)
sys.stdout.buffer.write(buf.getvalue())
""" % (SIZE, SIZE)


@pytest.fixture(scope="module")
def torch_reference():
    if importlib.util.find_spec("torch") is None:  # find_spec does not import it
        pytest.skip("torch is not installed")
    python_dir = os.path.dirname(os.path.dirname(prequant.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([python_dir, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _TORCH_REFERENCE], capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    with np.load(io.BytesIO(proc.stdout)) as z:
        state_dict = {k[3:]: z[k] for k in z.files if k.startswith("sd.")}
        return state_dict, z["x"], z["y"]


def test_keras_port_computes_the_torch_models_logits(torch_reference):
    state_dict, x, expected = torch_reference
    model = load_torch_state_dict(efficientnet_lite_keras(SIZE), state_dict)
    actual = np.asarray(model(np.transpose(x, (0, 2, 3, 1)), training=False))
    assert expected.std() > 1e-2  # the random network does not collapse to a constant
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_state_dict_must_match_the_model_exactly(torch_reference):
    state_dict, _, _ = torch_reference
    missing = {k: v for k, v in state_dict.items() if not k.startswith("_blocks.3._bn1.")}
    with pytest.raises(ValueError, match="blocks_3_bn1"):
        load_torch_state_dict(efficientnet_lite_keras(SIZE), missing)
    extra = dict(state_dict, **{"_extra.weight": np.zeros(3, "float32")})
    with pytest.raises(ValueError, match="_extra.weight"):
        load_torch_state_dict(efficientnet_lite_keras(SIZE), extra)
