import pytest

from health_helpers import Flaky


@pytest.fixture
def flaky_factory():
    made = []

    def make(n: int = 1, ports=None) -> Flaky:
        f = Flaky(n, ports)
        made.append(f)
        return f
    yield make
    for f in made:
        f.kill()
