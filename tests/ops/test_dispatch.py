"""Backend selection shared by the ops (``segman.ops.dispatch``): the ``backend=`` argument,
``force_backend`` and ``SEGMAN_OPS_BACKEND``, auto-selection by ``can_run`` predicates, and the
rule that a forced backend never falls back silently."""
import importlib
import logging

import pytest
import torch

from ops_testing import ALL_BACKENDS, EXPORT_BACKEND, op_backend_names
from segman.ops import (BackendError, cross_merge, cross_scan, force_backend, neighborhood_attention_2d, ss2d_scan,
                        selective_scan)

dispatch = importlib.import_module("segman.ops.dispatch")
NA_MODULE = importlib.import_module("segman.ops.neighborhood_attention")
SCAN_MODULE = importlib.import_module("segman.ops.selective_scan")


def _scan_inputs():
    return (torch.randn(1, 2, 5), torch.randn(1, 2, 5), -torch.rand(2, 1), torch.randn(1, 1, 1, 5),
            torch.randn(1, 1, 1, 5))


def _na_inputs():
    t = torch.randn(1, 1, 4, 4, 2)
    return t, t, t, 3


# op name -> a call of the public function with tiny inputs, taking backend=...
CALLS = {
    "selective_scan": lambda **kw: selective_scan(*_scan_inputs(), **kw),
    "cross_scan": lambda **kw: cross_scan(torch.randn(1, 2, 3, 4), **kw),
    "cross_merge": lambda **kw: cross_merge(torch.randn(1, 4, 2, 3, 4), **kw),
    "ss2d_scan": lambda **kw: ss2d_scan(torch.randn(1, 2, 3, 4), torch.randn(1, 8, 12), -torch.rand(8, 1),
                                        torch.randn(1, 4, 1, 12), torch.randn(1, 4, 1, 12), **kw),
    "neighborhood_attention_2d": lambda **kw: neighborhood_attention_2d(*_na_inputs(), **kw),
}
OPS = list(CALLS)


def _fake_backend(name, reason=None, calls=None):
    def run(*args, **kwargs):
        if calls is not None:
            calls.append(name)
        return "fake-result"

    return dispatch.Backend(name, lambda *a, **k: reason, run)


class TestRegistry:
    @pytest.mark.parametrize("module,attr", [("selective_scan", "BACKENDS"), ("neighborhood_attention", "BACKENDS"),
                                             ("cross_scan", "SCAN_BACKENDS"), ("cross_scan", "MERGE_BACKENDS")])
    def test_torch_reference_backend_registered(self, module, attr):
        names = op_backend_names(module, attr)
        assert "torch" in names
        assert len(set(names)) == len(names)
        assert set(names) <= {*ALL_BACKENDS, EXPORT_BACKEND}, "add new backend names to ops_testing.ALL_BACKENDS"

    def test_all_ops_listed(self):
        assert set(dispatch.ALL_OPS) == set(OPS)


class TestBackendArgument:
    @pytest.mark.parametrize("op", OPS)
    def test_torch_by_name(self, op):
        assert torch.is_tensor(CALLS[op](backend="torch"))

    @pytest.mark.parametrize("op", OPS)
    def test_unknown_backend(self, op):
        with pytest.raises(BackendError, match=rf"{op}: unknown backend 'nope'; choose one of \[.*'torch'"):
            CALLS[op](backend="nope")

    def test_backend_error_is_a_runtime_error(self):
        assert issubclass(BackendError, RuntimeError)

    def test_argument_beats_force_backend_and_env(self, monkeypatch):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "nope")
        with force_backend("nope"):
            for op in OPS:
                assert torch.is_tensor(CALLS[op](backend="torch"))


class TestForceBackend:
    @pytest.mark.parametrize("op", OPS)
    def test_forced_unknown_raises_at_call(self, op):
        with force_backend("nope"):
            with pytest.raises(BackendError, match=r"unknown backend 'nope'"):
                CALLS[op]()
        assert torch.is_tensor(CALLS[op]())

    def test_restores_previous_after_block(self):
        assert dispatch.forced_backend("selective_scan") is None
        with force_backend("torch"):
            assert dispatch.forced_backend("selective_scan") == "torch"
            with force_backend("selective_scan=nope"):
                assert dispatch.forced_backend("selective_scan") == "nope"
                assert dispatch.forced_backend("cross_scan") is None
                with pytest.raises(BackendError):
                    CALLS["selective_scan"]()
                assert torch.is_tensor(CALLS["cross_scan"]())
            assert dispatch.forced_backend("selective_scan") == "torch"
        assert dispatch.forced_backend("selective_scan") is None

    def test_restores_previous_after_exception(self):
        with force_backend("torch"):
            with pytest.raises(KeyError):
                with force_backend("nope"):
                    raise KeyError("boom")
            assert dispatch.forced_backend("neighborhood_attention_2d") == "torch"
            with pytest.raises(BackendError):
                with force_backend("nope"):
                    CALLS["neighborhood_attention_2d"]()
            assert dispatch.forced_backend("neighborhood_attention_2d") == "torch"
        assert dispatch.forced_backend("neighborhood_attention_2d") is None

    @pytest.mark.parametrize("spec", ["foo=bar", "selective_scan=torch,bogus", "selective_scan=torch,nope=x"])
    def test_malformed_spec_raises_on_entry(self, spec):
        with pytest.raises(BackendError, match=r"cannot parse backend override"):
            with force_backend(spec):
                pytest.fail("entered the block")
        assert dispatch.forced_backend("selective_scan") is None

    def test_none_ignores_environment(self, monkeypatch):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "nope")
        with pytest.raises(BackendError):
            CALLS["cross_scan"]()
        with force_backend(None):
            assert torch.is_tensor(CALLS["cross_scan"]())
        with pytest.raises(BackendError):
            CALLS["cross_scan"]()

    def test_force_beats_environment(self, monkeypatch):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "nope")
        with force_backend("torch"):
            for op in OPS:
                assert torch.is_tensor(CALLS[op]())


class TestEnvironmentVariable:
    @pytest.mark.parametrize("spec", ["torch", " torch ", "selective_scan=torch",
                                      "neighborhood_attention_2d=torch, selective_scan = torch,cross_scan=torch"])
    def test_valid_overrides(self, monkeypatch, spec):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", spec)
        for op in OPS:
            assert torch.is_tensor(CALLS[op]())

    def test_per_op_syntax_targets_one_op(self, monkeypatch):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "cross_scan=torch,neighborhood_attention_2d=nope")
        assert dispatch.forced_backend("cross_scan") == "torch"
        assert dispatch.forced_backend("selective_scan") is None
        with pytest.raises(BackendError, match=r"neighborhood_attention_2d: unknown backend 'nope'"):
            CALLS["neighborhood_attention_2d"]()
        for op in ("selective_scan", "cross_scan", "cross_merge"):
            assert torch.is_tensor(CALLS[op]())

    @pytest.mark.parametrize("op", OPS)
    def test_unknown_name(self, monkeypatch, op):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "nope")
        with pytest.raises(BackendError, match=r"unknown backend 'nope'"):
            CALLS[op]()

    @pytest.mark.parametrize("spec", ["foo=bar", "selective_scan=torch,garbage", "=torch"])
    @pytest.mark.parametrize("op", OPS)
    def test_malformed(self, monkeypatch, spec, op):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", spec)
        with pytest.raises(BackendError, match=r"cannot parse backend override"):
            CALLS[op]()

    def test_empty_means_automatic(self, monkeypatch):
        monkeypatch.setenv("SEGMAN_OPS_BACKEND", "")
        assert dispatch.forced_backend("selective_scan") is None
        assert torch.is_tensor(CALLS["selective_scan"]())


class TestSelection:
    """Auto-selection walks the op's list in order; a forced backend that declines raises."""

    def test_auto_skips_declining_backend_and_logs(self, monkeypatch, caplog):
        monkeypatch.setattr(NA_MODULE, "BACKENDS", [_fake_backend("fast", "needs CUDA"), *NA_MODULE.BACKENDS])
        with caplog.at_level(logging.DEBUG, logger="segman.ops"):
            out = CALLS["neighborhood_attention_2d"]()
        assert torch.is_tensor(out)
        assert "skipping backend 'fast': needs CUDA" in caplog.text
        assert "using backend 'torch'" in caplog.text

    def test_auto_prefers_first_backend_that_can_run(self, monkeypatch):
        calls = []
        monkeypatch.setattr(SCAN_MODULE, "BACKENDS", [_fake_backend("fast", None, calls), *SCAN_MODULE.BACKENDS])
        assert CALLS["selective_scan"]() == "fake-result" and calls == ["fast"]
        assert torch.is_tensor(CALLS["selective_scan"](backend="torch"))

    def test_forced_declining_backend_raises_no_fallback(self, monkeypatch):
        monkeypatch.setattr(SCAN_MODULE, "BACKENDS", [_fake_backend("fast", "d_state > 256"), *SCAN_MODULE.BACKENDS])
        with pytest.raises(BackendError, match=r"selective_scan: backend 'fast' cannot run these inputs: d_state > 256"):
            CALLS["selective_scan"](backend="fast")
        with force_backend("fast"), pytest.raises(BackendError, match=r"cannot run these inputs"):
            CALLS["selective_scan"]()

    def test_nothing_can_run(self, monkeypatch):
        monkeypatch.setattr(NA_MODULE, "BACKENDS", [_fake_backend("a", "reason A"), _fake_backend("b", "reason B")])
        with pytest.raises(BackendError, match=r"no backend can run these inputs \(a: reason A; b: reason B\)"):
            CALLS["neighborhood_attention_2d"]()

    def test_validation_happens_before_dispatch(self, monkeypatch):
        """Bad inputs are a ValueError even when the forced backend is unknown."""
        with force_backend("nope"), pytest.raises(ValueError, match=r"kernel_size"):
            t = torch.zeros(1, 1, 4, 4, 2)
            neighborhood_attention_2d(t, t, t, 2)
