"""The backend registry: explicit choice, TSCD_BACKEND as the default of auto, fallback
warning, bad names, availability reasons, the debug log of each choice."""
import logging
import warnings

import pytest
import torch

from tscd.ops import available_backends, backends, scd_loss


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, 8, generator=gen), torch.randn(1, 3, 5, generator=gen),
            torch.randn(1, 4, 8, generator=gen), torch.randn(1, 4, 5, generator=gen)]


@pytest.fixture
def calls(monkeypatch):
    """Records which backend ran scd_loss ("torch" for the reference)."""
    seen = []
    import tscd.ops.scd as scd_module

    primitives = backends.primitives
    monkeypatch.setattr(scd_module, "primitives", lambda b: seen.append(b) or primitives(b))
    reference = scd_module.reference.scd_loss
    monkeypatch.setattr(scd_module.reference, "scd_loss", lambda *a: seen.append("torch") or reference(*a))
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())
    return seen


@pytest.mark.parametrize("backend", available_backends("cpu", "scd_loss"))
def test_explicit_backend_is_honoured(calls, backend):
    scd_loss(*_inputs(), backend=backend)
    assert set(calls) == {backend}


def test_auto_on_cpu_prefers_cpp(calls):
    if not backends.can_run("cpp", "cpu"):
        pytest.skip(f"backend 'cpp' unavailable: {backends.why_unusable('cpp', 'cpu')}")
    scd_loss(*_inputs())
    assert set(calls) == {"cpp"}


def test_env_is_only_the_default_of_auto(calls, monkeypatch):
    monkeypatch.setenv("TSCD_BACKEND", "torch")
    scd_loss(*_inputs())
    assert calls == ["torch"]
    scd_loss(*_inputs(), backend="cpp")
    assert set(calls[1:]) == {"cpp"}
    monkeypatch.setenv("TSCD_BACKEND", "pydensecrf")  # not a backend of scd_loss: auto as if unset
    assert backends.resolve("scd_loss", "auto", "cpu") == backends.resolve("dense_energy_loss", "exact", "cpu")


def test_invalid_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        scd_loss(*_inputs(), backend="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        scd_loss(*_inputs(), backend="pydensecrf")  # a backend, but not one of this op
    monkeypatch.setenv("TSCD_BACKEND", "gpu")
    with pytest.raises(ValueError, match="TSCD_BACKEND must be one of"):
        scd_loss(*_inputs())


def test_unusable_backend_falls_back_with_one_warning(calls, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.warns(RuntimeWarning, match="backend 'triton' cannot run on cpu tensors"):
        scd_loss(*_inputs(), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scd_loss(*_inputs(), backend="triton")
    assert set(calls) == {backends.resolve("scd_loss", "auto", "cpu")}


def test_reasons_and_availability(monkeypatch):
    assert backends.why_unusable("torch", "meta") is None and backends.can_run("torch", "cpu")
    assert "no cpp kernels for meta tensors" in backends.why_unusable("cpp", "meta")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in backends.why_unusable("triton", "cpu")
    assert "triton" not in available_backends("cpu")
    assert set(available_backends("cpu", "scd_loss")) <= {"torch", "triton", "cpp"}
    assert "lattice" not in available_backends("cuda")
    assert backends.resolve("scd_loss", "auto", "meta") == "torch"


def test_each_choice_is_logged_at_debug(caplog, monkeypatch):
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    with caplog.at_level(logging.DEBUG, logger="tscd.ops"):
        scd_loss(*_inputs(), backend="torch")
    assert "tscd.ops.scd_loss on cpu tensors: torch (requested 'torch')" in caplog.text


def test_lattice_is_explicit_and_cpu_only(monkeypatch):
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    assert "no CUDA lattice yet" in backends.why_unusable("lattice", "cuda")
    for op in ("gaussian_product", "dense_energy_loss", "dense_crf"):
        assert "lattice" in backends.OP_BACKENDS[op]
        for pixels in (0, 10**7):
            assert backends.resolve(op, "exact", "cpu", pixels) != "lattice"
    for op in ("gaussian_product", "dense_energy_loss"):  # the lattice scale would change their values (method §8)
        assert backends.resolve(op, "auto", "cpu", 10**7) != "lattice"
    assert "lattice" not in backends.OP_BACKENDS["scd_loss"]


@pytest.mark.parametrize("op", ["gaussian_product", "dense_energy_loss", "dense_crf", "scd_loss"])
def test_no_silent_fallback_to_a_huge_reference(monkeypatch, op):
    """With every fused backend unusable, a reference that would exceed the limit is refused with
    the reasons; asked for by name, it runs."""
    import tscd.ops as ops

    real = backends.why_unusable
    monkeypatch.setattr(backends, "why_unusable", lambda b, d: real(b, d) if b == "torch" else "disabled by the test")
    monkeypatch.setattr(backends, "REFERENCE_FALLBACK_BYTES", 100)
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delenv("TSCD_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 6, 7, generator=gen) * 255
    probs = torch.softmax(torch.randn(1, 2, 6, 7, generator=gen), dim=1)
    calls = {
        "gaussian_product": lambda b: ops.gaussian_product(torch.randn(1, 5, 42, generator=gen),
                                                           torch.randn(1, 2, 42, generator=gen), backend=b),
        "dense_energy_loss": lambda b: ops.dense_energy_loss(images, probs, torch.ones(1, 6, 7),
                                                             torch.zeros(1, 6, 7, dtype=torch.bool), backend=b),
        "dense_crf": lambda b: ops.dense_crf(images, probs, num_iter=1, backend=b),
        "scd_loss": lambda b: ops.scd_loss(*_inputs(), backend=b),
    }
    with pytest.warns(RuntimeWarning):  # a named backend falling back, or auto left with the reference
        with pytest.raises(RuntimeError, match=r"no fused backend can run on cpu tensors \(.*cpp: disabled by the "
                                               r"test.*backend='torch'"):
            calls[op]("exact" if op == "dense_crf" else "cpp")
    assert torch.isfinite(torch.as_tensor(calls[op]("torch"))).all()


def test_auto_left_with_the_reference_says_so_once(calls, monkeypatch):
    """A C++ build that cannot happen (no compiler, say) must not leave every op silently on the slow
    reference: auto warns once, naming the backend and why; a request for torch itself does not warn."""
    monkeypatch.setattr(backends.extension, "load_failure", lambda: "CalledProcessError: c++: not found")
    with pytest.warns(RuntimeWarning, match=r"no fused backend can run on cpu.*cpp: .*c\+\+: not found"):
        scd_loss(*_inputs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scd_loss(*_inputs())  # once per process
        monkeypatch.setattr(backends, "_warned", set())
        scd_loss(*_inputs(), backend="torch")
    assert calls == ["torch"] * 3
