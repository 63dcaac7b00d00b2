"""Backend dispatch: explicit choice, TSCD_BACKEND override, fallback warning, bad names."""
import warnings

import pytest
import torch

import tscd.ops.scd as scd_module
from tscd.ops import _dispatch, available_backends, scd_loss


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, 8, generator=gen), torch.randn(1, 3, 5, generator=gen),
            torch.randn(1, 4, 8, generator=gen), torch.randn(1, 4, 5, generator=gen)]


@pytest.fixture
def calls(monkeypatch):
    """Records which backend's pass scd_loss ran ("torch" for the reference)."""
    seen = []
    for name, original in list(scd_module._PASSES.items()):
        monkeypatch.setitem(scd_module._PASSES, name, lambda *a, _n=name, _o=original: seen.append(_n) or _o(*a))
    reference = scd_module.reference.scd_loss
    monkeypatch.setattr(scd_module.reference, "scd_loss", lambda *a: seen.append("torch") or reference(*a))
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    return seen


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_explicit_backend_is_honoured(calls, backend):
    scd_loss(*_inputs(), backend=backend)
    assert set(calls) == {backend}


def test_auto_on_cpu_prefers_cpp(calls):
    scd_loss(*_inputs())
    assert set(calls) == {"cpp"}


def test_env_overrides_auto_only(calls, monkeypatch):
    monkeypatch.setenv("TSCD_BACKEND", "torch")
    scd_loss(*_inputs())
    assert calls == ["torch"]
    scd_loss(*_inputs(), backend="cpp")
    assert set(calls[1:]) == {"cpp"}


def test_invalid_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        scd_loss(*_inputs(), backend="fast")
    monkeypatch.setenv("TSCD_BACKEND", "gpu")
    with pytest.raises(ValueError, match="TSCD_BACKEND must be one of"):
        scd_loss(*_inputs())


def test_unusable_backend_falls_back_with_one_warning(calls, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="backend 'triton' cannot run on cpu tensors"):
        scd_loss(*_inputs(), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scd_loss(*_inputs(), backend="triton")
    assert set(calls) == {"cpp"}
