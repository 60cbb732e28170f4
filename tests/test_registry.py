import pytest

from facekd.errors import FacekdError
from facekd.registry import Registry


def test_register_build_and_errors():
    reg: Registry = Registry("widget")

    @reg.register()
    def small(n: int = 1):
        return ("small", n)

    @reg.register("big")
    def _big():
        return "big"

    assert reg.build("small", n=3) == ("small", 3)
    assert reg.names() == ["big", "small"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("small")(lambda: None)
    with pytest.raises(FacekdError, match=r"unknown widget 'huge'; known: big, small"):
        reg.get("huge")
