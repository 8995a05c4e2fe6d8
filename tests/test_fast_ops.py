"""pangu's CPU kernels (models/fast_ops.py): build and fallback, and parity forward and backward with
MindSpore's plain operations and with PyTorch (fp32, max abs error <= 1e-4 * max(1, max|ref|))."""

from __future__ import annotations

import numpy as np
import pytest


def _tolerance(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def _assert_close(name: str, got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, name
    error = float(np.abs(got - ref).max())
    print(f"{name}: max abs error {error:.3g} (tolerance {_tolerance(ref):.3g})")
    assert error <= _tolerance(ref), name
    return error


@pytest.fixture(scope="module")
def fast(ms):
    from pangu_cli.models import fast_ops

    if not fast_ops.prepare().ready:
        pytest.skip(f"fast kernels not available here: {fast_ops.prepare().reason}")
    with fast_ops.kernels(fast_ops.enabled_kinds()):  # restored after this module's tests
        yield fast_ops


def _build(fast_ops, enabled: bool, make):
    """Build a cell with the fast kernels switched on or off (the switch is read at construction)."""
    with fast_ops.kernels(fast_ops.KINDS if enabled else False):
        return make()


def _forward_and_grads(ms, cell, x: np.ndarray, dy_seed: int, jit: bool, method=None):
    """Output, d(sum(out*dy))/dx and the parameter gradients, in PyNative or compiled with ms.jit."""
    fn = getattr(cell, method) if method else cell
    out = fn(ms.Tensor(x))
    dy = ms.Tensor(np.random.default_rng(dy_seed).standard_normal(out.shape, dtype=np.float32))

    def loss(a):
        return (fn(a) * dy).sum()

    grad = ms.grad(loss, grad_position=0, weights=cell.trainable_params())
    if jit:
        grad = ms.jit(grad)
    dx, dparams = grad(ms.Tensor(x))
    return out.asnumpy(), dy.asnumpy(), dx.asnumpy(), [g.asnumpy() for g in dparams]


def _torch_reference(torch, fn, x: np.ndarray, params: list[np.ndarray], dy: np.ndarray):
    xt = torch.from_numpy(x).requires_grad_()
    pt = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    out = fn(xt, *pt)
    (out * torch.from_numpy(dy)).sum().backward()
    return out.detach().numpy(), xt.grad.numpy(), [p.grad.numpy() for p in pt]


# --------------------------------------------------------------------------------------------------
# Build, cache and fallback


def test_library_compiles_once_into_the_cache(fast, tmp_path):
    first = fast.build_library(cache=tmp_path)
    stamp = first.stat().st_mtime_ns
    second = fast.build_library(cache=tmp_path)
    assert first == second and first.parent == tmp_path and first.suffix == ".so"
    assert second.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no half-written build left behind


def test_no_compiler_is_a_clear_error(fast, tmp_path):
    with pytest.raises(RuntimeError, match="compil"):
        fast.build_library(compiler=str(tmp_path / "no-such-g++"), cache=tmp_path)


def test_switch_off_falls_back_to_plain_kernels(fast, monkeypatch):
    monkeypatch.setattr(fast, "_library", None)
    monkeypatch.setenv(fast.ENV_SWITCH, "0")
    library = fast.prepare()
    assert not library.ready and "PANGU_FAST_KERNELS" in library.reason
    assert not fast.configure("CPU").ready and not fast.enabled()
    monkeypatch.setattr(fast, "_library", None)
    monkeypatch.delenv(fast.ENV_SWITCH)
    assert fast.configure("CPU").ready and fast.enabled()
    assert not fast.configure("GPU").ready and not fast.enabled()  # device kernels off CPU
    monkeypatch.setenv(fast.ENV_SWITCH, "conv,group_norm")
    fast.configure("CPU")
    assert fast.enabled_kinds() == ("conv", "group_norm") and not fast.enabled("softmax")
    monkeypatch.setenv(fast.ENV_SWITCH, "conv,bogus")
    from pangu_cli.errors import UsageError

    with pytest.raises(UsageError, match="PANGU_FAST_KERNELS"):
        fast.configure("CPU")
    monkeypatch.delenv(fast.ENV_SWITCH)
    fast.configure("CPU")
    assert fast.enabled_kinds() == fast.KINDS


def test_convolutions_use_onednn_direct_kernels(fast):
    for kind in ("forward", "backward_data", "backward_weights"):
        impl = fast.conv_implementation(kind, (2, 32, 8, 8), (32, 32, 3, 3))
        assert impl.startswith(("jit", "brg")), impl  # not gemm (im2col) and not the reference fallback


# --------------------------------------------------------------------------------------------------
# GroupNorm (+ SiLU)


@pytest.mark.parity
@pytest.mark.parametrize("silu", [False, True], ids=["norm", "norm+silu"])
@pytest.mark.parametrize("jit", [False, True], ids=["pynative", "jit"])
def test_group_norm_matches_plain_and_torch(ms, torch, fast, silu, jit):
    from pangu_cli.models.layers import GroupNorm

    rng = np.random.default_rng(3)
    channels, groups, eps = 64, 32, 1e-6
    x = (rng.standard_normal((2, channels, 6, 5), dtype=np.float32) * 3 + 1).astype(np.float32)
    gamma = (1 + 0.3 * rng.standard_normal(channels)).astype(np.float32)
    beta = (0.3 * rng.standard_normal(channels)).astype(np.float32)
    method = "forward_silu" if silu else None
    results = {}
    for enabled in (True, False):
        cell = _build(fast, enabled, lambda: GroupNorm(groups, channels, eps=eps))
        assert cell.use_fast == enabled
        cell.gamma.set_data(ms.Tensor(gamma))
        cell.beta.set_data(ms.Tensor(beta))
        results[enabled] = _forward_and_grads(ms, cell, x, dy_seed=4, jit=jit, method=method)

    def reference(xt, g, b):
        out = torch.nn.functional.group_norm(xt, groups, g, b, eps)
        return torch.nn.functional.silu(out) if silu else out

    out_fast, dy, dx_fast, (dg_fast, db_fast) = results[True]
    out_plain, _, dx_plain, (dg_plain, db_plain) = results[False]
    out_ref, dx_ref, (dg_ref, db_ref) = _torch_reference(torch, reference, x, [gamma, beta], dy)
    for name, fast_value, plain_value, ref in [("y", out_fast, out_plain, out_ref), ("dx", dx_fast, dx_plain, dx_ref),
                                               ("dgamma", dg_fast, dg_plain, dg_ref),
                                               ("dbeta", db_fast, db_plain, db_ref)]:
        _assert_close(f"fast {name} vs torch", fast_value, ref)
        _assert_close(f"plain {name} vs torch", plain_value, ref)
        _assert_close(f"fast {name} vs plain", fast_value, plain_value)


# --------------------------------------------------------------------------------------------------
# Conv2d


_GEOMETRIES = {"3x3": (32, 64, 3, 1, 1), "3x3-stride2": (64, 32, 3, 2, 1), "1x1": (64, 32, 1, 1, 0),
               "3x3-rgb-in": (3, 32, 3, 1, 1)}


@pytest.mark.parity
@pytest.mark.parametrize("geometry, jit", [(_GEOMETRIES["3x3"], False), (_GEOMETRIES["3x3"], True),
                                           (_GEOMETRIES["3x3-stride2"], True), (_GEOMETRIES["1x1"], False),
                                           (_GEOMETRIES["3x3-rgb-in"], False)],
                         ids=["3x3-pynative", "3x3-jit", "3x3-stride2-jit", "1x1-pynative", "3x3-rgb-in-pynative"])
def test_conv2d_matches_plain_and_torch(ms, torch, fast, geometry, jit):
    from pangu_cli.models.layers import conv2d

    c_in, c_out, k, stride, pad = geometry
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, c_in, 10, 10), dtype=np.float32)
    weight = (rng.standard_normal((c_out, c_in, k, k)) * (c_in * k * k) ** -0.5).astype(np.float32)
    bias = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    results = {}
    for enabled in (True, False):
        cell = _build(fast, enabled, lambda: conv2d(c_in, c_out, k, stride=stride, padding=pad))
        assert cell.use_fast == enabled
        cell.weight.set_data(ms.Tensor(weight))
        cell.bias.set_data(ms.Tensor(bias))
        results[enabled] = _forward_and_grads(ms, cell, x, dy_seed=6, jit=jit)

    def reference(xt, w, b):
        return torch.nn.functional.conv2d(xt, w, b, stride=stride, padding=pad)

    out_fast, dy, dx_fast, (dw_fast, db_fast) = results[True]
    out_plain, _, dx_plain, (dw_plain, db_plain) = results[False]
    out_ref, dx_ref, (dw_ref, db_ref) = _torch_reference(torch, reference, x, [weight, bias], dy)
    for name, fast_value, plain_value, ref in [("y", out_fast, out_plain, out_ref), ("dx", dx_fast, dx_plain, dx_ref),
                                               ("dweight", dw_fast, dw_plain, dw_ref),
                                               ("dbias", db_fast, db_plain, db_ref)]:
        _assert_close(f"fast {name} vs torch", fast_value, ref)
        _assert_close(f"plain {name} vs torch", plain_value, ref)
        _assert_close(f"fast {name} vs plain", fast_value, plain_value)


# --------------------------------------------------------------------------------------------------
# Kernels of the transformer blocks: LayerNorm, softmax, GEGLU, Dense (sgemm), attention


def _row_case(name: str):
    """(builder of our cell, torch function of (x, *params), input shape) for one last-axis kernel."""
    import torch.nn.functional as F

    from pangu_cli.models import layers
    from pangu_cli.models.unet import GEGLU

    if name == "layer_norm":
        return lambda: layers.layer_norm(48, eps=1e-5), lambda x, g, b: F.layer_norm(x, (48,), g, b, 1e-5), (2, 7, 48)
    if name == "silu":
        return layers.SiLU, lambda x: F.silu(x), (2, 3, 40)
    if name == "softmax":
        return layers.Softmax, lambda x: torch_softmax(x), (2, 3, 7, 9)
    if name == "geglu":
        def geglu(x, w, b):
            value, gate = F.linear(x, w, b).chunk(2, dim=-1)
            return value * F.gelu(gate)
        return lambda: GEGLU(24, 40), geglu, (2, 7, 24)
    if name == "attention":  # cross-attention: 7 queries over 5 context tokens, 4 heads of 8
        from mindspore import nn as ms_nn

        from pangu_cli.models.unet import CrossAttention

        context = np.random.default_rng(11).standard_normal((2, 5, 12), dtype=np.float32)

        class WithContext(ms_nn.Cell):
            def __init__(self):
                super().__init__()
                self.attn = CrossAttention(32, heads=4, dim_head=8, context_dim=12)
                self.context = __import__("mindspore").Tensor(context)

            def construct(self, x):
                return self.attn(x, self.context)

        def reference(x, wq, wk, wv, wo, bo):
            ctx = torch_tensor(context)
            split = lambda t: t.reshape(t.shape[0], t.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
            out = F.scaled_dot_product_attention(split(F.linear(x, wq)), split(F.linear(ctx, wk)),
                                                 split(F.linear(ctx, wv)))
            return F.linear(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], 32), wo, bo)

        return WithContext, reference, (2, 7, 32)
    if name == "dense_no_bias":
        return lambda: layers.Dense(24, 40, has_bias=False), lambda x, w: F.linear(x, w), (2, 7, 24)
    return lambda: layers.Dense(24, 40), lambda x, w, b: F.linear(x, w, b), (2, 7, 24)


def torch_softmax(x):
    return x.softmax(dim=-1)


def torch_tensor(array):
    import torch

    return torch.from_numpy(array)


@pytest.mark.parity
@pytest.mark.parametrize("name, jit", [("layer_norm", False), ("layer_norm", True), ("softmax", False),
                                       ("softmax", True), ("geglu", True), ("dense", False), ("dense", True),
                                       ("dense_no_bias", True), ("attention", False), ("attention", True),
                                       ("silu", False), ("silu", True)])
def test_row_kernels_match_plain_and_torch(ms, torch, fast, name, jit):
    make, reference, shape = _row_case(name)
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape, dtype=np.float32) * 2).astype(np.float32)
    cells = {enabled: _build(fast, enabled, make) for enabled in (True, False)}
    assert any(getattr(c, "use_fast", False) for _, c in cells[True].cells_and_names())
    assert not any(getattr(c, "use_fast", False) for _, c in cells[False].cells_and_names())
    params = [(rng.standard_normal(p.shape) * 0.3 + (1.0 if p.name.endswith("gamma") else 0.0)).astype(np.float32)
              for p in cells[True].trainable_params()]
    results = {}
    for enabled, cell in cells.items():
        for p, value in zip(cell.trainable_params(), params):
            p.set_data(ms.Tensor(value))
        results[enabled] = _forward_and_grads(ms, cell, x, dy_seed=9, jit=jit)
    out_fast, dy, dx_fast, dp_fast = results[True]
    out_plain, _, dx_plain, dp_plain = results[False]
    out_ref, dx_ref, dp_ref = _torch_reference(torch, reference, x, params, dy)
    pairs = [("y", out_fast, out_plain, out_ref), ("dx", dx_fast, dx_plain, dx_ref)]
    pairs += [(f"dparam{i}", f, p, r) for i, (f, p, r) in enumerate(zip(dp_fast, dp_plain, dp_ref))]
    for label, fast_value, plain_value, ref in pairs:
        _assert_close(f"{name} fast {label} vs torch", fast_value, ref)
        _assert_close(f"{name} plain {label} vs torch", plain_value, ref)
        _assert_close(f"{name} fast {label} vs plain", fast_value, plain_value)


# --------------------------------------------------------------------------------------------------
# A whole network: same weights, fast and plain kernels, loss and every parameter's gradient


@pytest.mark.parity
def test_unet_training_gradients_match_plain_kernels(ms, fast):
    from mindspore import ops

    from pangu_cli.models.unet import UNetModel

    config = dict(in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                  attention_resolutions=[2], transformer_depth=1, num_head_channels=32, context_dim=16,
                  adm_in_channels=8, num_classes="sequential", use_spatial_transformer=True,
                  use_linear_in_transformer=True, legacy=False)
    fast_net = _build(fast, True, lambda: UNetModel(**config))
    plain_net = _build(fast, False, lambda: UNetModel(**config))
    rng = np.random.default_rng(7)
    for (name, p_fast), p_plain in zip(fast_net.parameters_and_names(), plain_net.get_parameters()):
        value = rng.standard_normal(p_fast.shape).astype(np.float32) * (0.2 if p_fast.ndim > 1 else 0.05)
        if name.endswith("gamma"):
            value += 1.0
        p_fast.set_data(ms.Tensor(value))
        p_plain.set_data(ms.Tensor(value))
    assert [n for n, _ in fast_net.parameters_and_names()] == [n for n, _ in plain_net.parameters_and_names()]
    x = ms.Tensor(rng.standard_normal((2, 3, 8, 8), dtype=np.float32))
    t = ms.Tensor(np.array([10, 700], dtype=np.int32))
    ctx = ms.Tensor(rng.standard_normal((2, 5, 16), dtype=np.float32))
    y = ms.Tensor(rng.standard_normal((2, 8), dtype=np.float32))
    noise = ms.Tensor(rng.standard_normal((2, 3, 8, 8), dtype=np.float32))

    def step_of(net):  # PyNative: the compiled path of each kernel is covered by the jit cases above
        def loss(x, t, ctx, y):
            return ops.mse_loss(net(x, t, ctx, y), noise)
        return ms.value_and_grad(loss, None, net.trainable_params())

    loss_fast, grads_fast = step_of(fast_net)(x, t, ctx, y)
    loss_plain, grads_plain = step_of(plain_net)(x, t, ctx, y)
    _assert_close("loss", loss_fast.asnumpy(), loss_plain.asnumpy())
    for (name, _), g_fast, g_plain in zip(fast_net.parameters_and_names(), grads_fast, grads_plain):
        _assert_close(f"grad {name}", g_fast.asnumpy(), g_plain.asnumpy())
