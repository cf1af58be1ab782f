import pytest
from numba import cuda


@pytest.fixture
def stream():
    return cuda.stream()
