import pytest

from pq_onnx_helpers import find_cli


@pytest.fixture(scope="session")
def cli() -> str:
    path = find_cli()
    if not path:
        pytest.fail("the `prequant` tool is not on PATH and PREQUANT_CLI is not set; build it "
                    "(cmake --build build-onnx) and set PREQUANT_CLI=build-onnx/cpp/prequant, "
                    "or pip install the package", pytrace=False)
    return path
