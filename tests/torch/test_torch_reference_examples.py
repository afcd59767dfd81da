"""The Model Preparer reference's code examples, run against prequant.torch.prepare_model.

The three examples (classes and the functions that run them) are verbatim from
reference/torch-model-preparer.txt except the import line. The "limitations of torch.fx"
snippets follow, reformatted where the reference flattened them onto one line, and each is
run through prepare_model as well as through torch.fx where the reference does so.
"""

import math  # for the limitation examples below
from math import sqrt  # `sqrt` as the reference's ModelWithNonTorchFunction calls it

import pytest
import torch.fx
from torch import nn

from prequant.torch import PrepareError

pytestmark = pytest.mark.usefixtures("single_thread_torch")

# ---------------------------------------------------------------------------------------
# Verbatim: required imports (import line changed) and examples 1-3
# ---------------------------------------------------------------------------------------

import torch
import torch.nn.functional as F
from prequant.torch import prepare_model


class ModelWithFunctionalReLU(torch.nn.Module):
    """ Model that uses functional ReLU instead of nn.Modules. Expects input of shape (1, 3, 32, 32) """
    def __init__(self):
        super(ModelWithFunctionalReLU, self).__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x).relu()
        return x


def model_preparer_functional_example():

    # Load the model and keep in eval() mode
    model = ModelWithFunctionalReLU().eval()
    input_shape = (1, 3, 32, 32)
    input_tensor = torch.randn(*input_shape)

    # Call to prepare_model API
    prepared_model = prepare_model(model)
    print(prepared_model)

    # Compare the outputs of original and transformed model
    assert torch.allclose(model(input_tensor), prepared_model(input_tensor))


class ModelWithReusedReLU(torch.nn.Module):
    """ Model that uses single ReLU instances multiple times in the forward. Expects input of shape (1, 3, 32, 32) """
    def __init__(self):
        super(ModelWithReusedReLU, self).__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.relu = torch.nn.ReLU()
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.relu(x)
        x = self.conv2(x)
        x = self.relu(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = self.relu(x)
        x = self.fc2(x)
        x = self.relu(x)
        return x


def model_preparer_reused_example():

    # Load the model and keep in eval() mode
    model = ModelWithReusedReLU().eval()
    input_shape = (1, 3, 32, 32)
    input_tensor = torch.randn(*input_shape)

    # Call to prepare_model API
    prepared_model = prepare_model(model)
    print(prepared_model)

    # Compare the outputs of original and transformed model
    assert torch.allclose(model(input_tensor), prepared_model(input_tensor))


class ModelWithElementwiseAddOp(torch.nn.Module):
    def __init__(self):
        super(ModelWithElementwiseAddOp, self).__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 5, bias=False)
        self.conv2 = torch.nn.Conv2d(3, 6, 5)

    def forward(self, *inputs):
        x1 = self.conv1(inputs[0])
        x2 = self.conv2(inputs[1])
        x = x1 + x2
        return x


def model_preparer_elementwise_add_example():

    # Load the model and keep in eval() mode
    model = ModelWithElementwiseAddOp().eval()
    input_shape = (1, 3, 32, 32)
    input_tensor = [torch.randn(*input_shape), torch.randn(*input_shape)]

    # Call to prepare_model API
    prepared_model = prepare_model(model)
    print(prepared_model)

    # Compare the outputs of original and transformed model
    assert torch.allclose(model(*input_tensor), prepared_model(*input_tensor))


# ---------------------------------------------------------------------------------------
# The examples, run, plus what the reference says the prepared model looks like
# ---------------------------------------------------------------------------------------

def _module_calls(graph_module):
    return [n.target for n in graph_module.graph.nodes if n.op == "call_module"]


def _function_calls(graph_module):
    return [n for n in graph_module.graph.nodes if n.op in ("call_function", "call_method")]


def test_example_1_functional_relu(capsys):
    model_preparer_functional_example()
    assert "ReLU()" in capsys.readouterr().out

    prepared = prepare_model(ModelWithFunctionalReLU().eval())
    relus = [name for name, m in prepared.named_modules() if type(m) is nn.ReLU]
    assert relus == ["relu", "relu_1", "relu_2", "relu_3"]  # three F.relu + one .relu()
    assert isinstance(prepared.flatten, nn.Flatten)
    assert _function_calls(prepared) == []
    ops = prepared.prequant_summary.converted_ops()
    assert ops == {"F.relu": 3, "Tensor.relu": 1, "torch.flatten": 1}


def test_example_2_reused_relu(capsys):
    model_preparer_reused_example()
    capsys.readouterr()

    model = ModelWithReusedReLU().eval()
    prepared = prepare_model(model)
    calls = _module_calls(prepared)
    relu_calls = [t for t in calls if t.startswith("relu")]
    assert relu_calls == ["relu", "relu_1", "relu_2", "relu_3"]
    assert len(set(calls)) == len(calls)  # no module is called twice
    relu_objects = {id(prepared.get_submodule(t)) for t in relu_calls}
    assert len(relu_objects) == 4
    assert all(prepared.get_submodule(t) is not model.relu for t in relu_calls)
    unrolled = [(u.source, u.copy) for u in prepared.prequant_summary.unrollings]
    assert unrolled == [("relu", "relu_1"), ("relu", "relu_2"), ("relu", "relu_3")]


def test_example_3_elementwise_add(capsys):
    model_preparer_elementwise_add_example()
    capsys.readouterr()

    prepared = prepare_model(ModelWithElementwiseAddOp().eval())
    from prequant.torch.modules import Add

    assert isinstance(prepared.add, Add)
    converted = [str(c) for c in prepared.prequant_summary.conversions]
    assert converted == ["functional operator.add at node add -> module add (Add)"]


# ---------------------------------------------------------------------------------------
# Limitation 1: dynamic control flow, concrete_args and torch.fx.wrap
# ---------------------------------------------------------------------------------------

def f(x, flag):
    if flag:
        return x
    else:
        return x*2


def test_limitation_1_control_flow_torch_fx():
    with pytest.raises(torch.fx.proxy.TraceError, match="control flow"):
        torch.fx.symbolic_trace(f)  # Fails!
    traced = torch.fx.symbolic_trace(f, concrete_args={'flag': True})
    x = torch.randn(3)
    assert torch.equal(traced(x, True), x)


class ModelWithFlag(nn.Module):
    """The reference's `f` as a model: prepare_model fails without concrete_args."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, flag):
        x = self.conv(x)
        if flag:
            return x
        else:
            return x*2


def test_limitation_1_control_flow_prepare_model():
    model = ModelWithFlag().eval()
    with pytest.raises(PrepareError, match="concrete_args"):
        prepare_model(model)
    prepared = prepare_model(model, concrete_args={'flag': False})
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(prepared(x, False), model(x, False))
    assert "mul" in dict(prepared.named_modules())


@torch.fx.wrap
def custom_function_not_to_be_traced(x, y):
    """ Function which we do not want to be traced, when traced using torch FX API, call to this function will
    be inserted as call_function, and won't be traced through """
    for i in range(2):
        x += x
        y += y
    return x * x + y * y


class ModelWithWrappedFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.relu(custom_function_not_to_be_traced(self.conv1(x), self.conv2(x)))


def test_limitation_1_wrapped_function_stays_one_node():
    model = ModelWithWrappedFunction().eval()
    prepared = prepare_model(model)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(prepared(x), model(x))
    targets = [n.target for n in prepared.graph.nodes if n.op == "call_function"]
    assert targets == [custom_function_not_to_be_traced]
    kept = prepared.prequant_summary.kept
    assert len(kept) == 1 and "torch.fx.wrap" in kept[0].reason
    assert isinstance(prepared.relu, nn.ReLU)


# ---------------------------------------------------------------------------------------
# Limitation 2: non-torch functions, torch.fx.wrap('len') / torch.fx.wrap('sqrt')
# ---------------------------------------------------------------------------------------

torch.fx.wrap('len')  # call the API at module-level scope.
torch.fx.wrap('sqrt')  # call the API at module-level scope.


class ModelWithNonTorchFunction(torch.nn.Module):
    def __init__(self):
        super(ModelWithNonTorchFunction, self).__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2, padding=2, bias=False)

    def forward(self, *inputs):
        x = self.conv(inputs[0])
        return x / sqrt(len(x))


def test_limitation_2_non_torch_function():
    model = ModelWithNonTorchFunction().eval()
    model_transformed = prepare_model(model)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model_transformed(x), model(x))
    from prequant.torch.modules import Divide

    assert isinstance(model_transformed.div, Divide)
    kept_ops = model_transformed.prequant_summary.kept_ops()
    assert kept_ops["len"] == 1 and kept_ops["math.sqrt"] == 1


class ModelCallingLenUnwrapped(nn.Module):
    """Same model without the module-level wrap: `len` of a traced value cannot be traced."""

    def forward(self, x):
        return x / math.sqrt(x.__len__())


def test_limitation_2_unwrapped_non_torch_function_fails_clearly():
    with pytest.raises(PrepareError) as failure:
        prepare_model(ModelCallingLenUnwrapped().eval())
    message = str(failure.value)
    assert "x.__len__()" in message and "torch.fx.wrap" in message


# ---------------------------------------------------------------------------------------
# Limitation 3: modules_to_exclude (Tracer.is_leaf_module)
# ---------------------------------------------------------------------------------------

class CustomModule(torch.nn.Module):
    @staticmethod
    def forward(x):
        return x * torch.nn.functional.softplus(x).sigmoid()


class CustomModel(torch.nn.Module):
    def __init__(self):
        super(CustomModel, self).__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, kernel_size=2)
        self.custom = CustomModule()

    def forward(self, inputs):
        x = self.conv1(inputs)
        x = self.custom(x)
        return x


def test_limitation_3_modules_to_exclude(capsys):
    model = CustomModel().eval()
    prepared_model = prepare_model(model, modules_to_exclude=[model.custom])
    print(prepared_model)
    assert "(custom): CustomModule()" in capsys.readouterr().out

    assert _module_calls(prepared_model) == ["conv1", "custom"]
    assert type(prepared_model.custom) is CustomModule
    assert prepared_model.custom is not model.custom  # a copy: the user's model is untouched
    assert prepared_model.prequant_summary.excluded == ["custom"]
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(prepared_model(x), model(x))


def test_limitation_3_without_exclusion_custom_module_is_traced_into():
    model = CustomModel().eval()
    prepared = prepare_model(model)
    assert _module_calls(prepared) == ["conv1", "custom.softplus", "custom.sigmoid", "custom.mul"]
    assert isinstance(prepared.custom.softplus, nn.Softplus)
    assert isinstance(prepared.custom.sigmoid, nn.Sigmoid)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(prepared(x), model(x))


# ---------------------------------------------------------------------------------------
# Limitation 4: tensor constructors
# ---------------------------------------------------------------------------------------

def f_arange(x):
    return torch.arange(x.shape[0], device=x.device)


def test_limitation_4_tensor_constructor_with_traced_size():
    # The reference reports a TypeError for this on older torch. torch 2.x records the
    # constructor as a node; either way prepare_model must not return a wrong model.
    try:
        traced = torch.fx.symbolic_trace(f_arange)
    except TypeError:
        return
    x = torch.randn(5, 2)
    assert torch.equal(traced(x), f_arange(x))


def f_hard_coded(x):
    return torch.arange(10, device=torch.device('cpu'))


@torch.fx.wrap
def do_not_trace_me(x):
    return torch.arange(x.shape[0], device=x.device)


def f_wrapped(x):
    return do_not_trace_me(x)


def test_limitation_4_workarounds():
    torch.fx.symbolic_trace(f_hard_coded)
    torch.fx.symbolic_trace(f_wrapped)


class ModelWithArange(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + do_not_trace_me(x).unsqueeze(1)


def test_limitation_4_wrapped_constructor_in_a_model():
    model = ModelWithArange().eval()
    prepared = prepare_model(model)
    x = torch.randn(3, 4)
    assert torch.equal(prepared(x), model(x))
    (kept,) = [k for k in prepared.prequant_summary.kept if k.op.endswith(".do_not_trace_me")]
    assert "torch.fx.wrap" in kept.reason
