"""Speed options (``train.*`` keys, ambient_med/speed.py): each changes what it claims (memory
order, saved activations, compiled calls, one multi-tensor EMA, one batched pair call) and leaves
the results equal within float tolerance. CUDA-only options skip without a GPU."""

from __future__ import annotations

import logging

import pytest
import torch
from _cli_fixtures import tiny_protocol

from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.networks import EDMDenoiser, NetworkConfig
from ambient_med.diffusion.objective import objective_loss
from ambient_med.errors import ConfigError
from ambient_med.training import speed
from ambient_med.training.config import load_protocol
from ambient_med.training.ema import ema_update
from ambient_med.training.loop import TensorDataset, TrainConfig, train

NET2 = NetworkConfig(sigma_data=1.0, features=(8, 16), attention_levels=(False, True),
                     norm_num_groups=4, num_head_channels=8)
NET3 = NetworkConfig(spatial_dims=3, sigma_data=1.0, features=(8, 16),
                     attention_levels=(False, False), norm_num_groups=4)
LOSS = LossConfig(sigma_data=1.0, consistency_start=0.0, distill_steps=4)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _data(shape=(16, 16), n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n, 1, *shape), generator=g)
    return TensorDataset(x0 + 0.5 * torch.randn(x0.shape, generator=g), 0.5)


def _train(net=NET2, shape=(16, 16), device="cpu", **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=4, batch_size=4, log_every=2, lr_warmup=2, **kw)
    return train(EDMDenoiser(net), _data(shape), LOSS, cfg, device=device)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


@pytest.fixture(scope="module")
def reference():
    return {2: _train(), 3: _train(NET3, (8, 8, 8))}


# -- protocol keys ------------------------------------------------------------------------------

def test_speed_keys_are_validated_and_packaged_protocols_load(tmp_path):
    with pytest.raises(ConfigError, match=r"train.*compile must be one of"):
        load_protocol(tiny_protocol(tmp_path, train={"compile": "fast"}))
    with pytest.raises(ConfigError, match=r"'train.channels_last' expects bool"):
        load_protocol(tiny_protocol(tmp_path, train={"channels_last": "yes"}))
    with pytest.raises(ConfigError, match=r"'train.grad_checkpointing' expects bool"):
        load_protocol(tiny_protocol(tmp_path, train={"grad_checkpointing": 1}))
    knee, vol = load_protocol("fastmri-knee-multicoil").train, load_protocol("nifti-3d").train
    for t in (knee, vol):
        assert t.compile in speed.COMPILE_MODES and isinstance(t.channels_last, bool)


# -- channels-last ------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_changes_memory_order_not_results(reference, dims):
    net, shape = (NET2, (16, 16)) if dims == 2 else (NET3, (8, 8, 8))
    fmt = speed.memory_format(dims)
    seen = []
    torch.manual_seed(0)
    model = EDMDenoiser(net)
    model.unet.down_blocks[0].resnets[0].conv1.register_forward_hook(
        lambda m, i, o: seen.append((o.shape[0], o.is_contiguous(memory_format=fmt)
                                     and not o.is_contiguous())))
    res = train(model, _data(shape), LOSS,
                TrainConfig(steps=4, batch_size=4, log_every=2, lr_warmup=2, channels_last=True),
                device="cpu")
    # every training forward ran in channels-last order (CPU conv3d returns NCDHW for a batch
    # of one, whatever the input's order: the consistency chain's single-image calls)
    assert seen and all(cl for n, cl in seen if dims == 2 or n > 1)
    # back to contiguous afterwards: a prior (safetensors) only takes contiguous tensors
    assert all(p.is_contiguous() for p in res.model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())
    assert _max_diff(res.model, reference[dims].model) < 1e-5


# -- gradient checkpointing ---------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_grad_checkpointing_saves_memory_and_keeps_gradients(dims):
    net, shape = (NET2, (32, 32)) if dims == 2 else (NET3, (16, 16, 16))
    torch.manual_seed(0)
    model = EDMDenoiser(net)
    y = torch.randn(4, 1, *shape)
    sn = torch.full((4,), 0.5)

    def grads(checkpointing):
        model.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(1)
        with speed.gradient_checkpointing(model, checkpointing) as n, speed.TensorMemory() as mem:
            objective_loss(model, y, sn, LOSS, generator=g).loss.backward()
        return n, mem.peak, [p.grad.clone() for p in model.parameters()]

    n0, peak0, g0 = grads(False)
    n1, peak1, g1 = grads(True)
    assert n0 == 0 and n1 == len(speed.checkpoint_blocks(model)) > 0
    assert peak1 < 0.8 * peak0, (peak1, peak0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # unwrapped afterwards: the blocks use their class's forward again
    assert all("forward" not in b.__dict__ for b in speed.checkpoint_blocks(model))


def test_grad_checkpointing_in_training_gives_the_same_weights(reference):
    assert _max_diff(_train(NET3, (8, 8, 8), grad_checkpointing=True).model,
                     reference[3].model) < 1e-5


# -- fused EMA ----------------------------------------------------------------------------------

def test_fused_ema_is_the_per_parameter_update(reference):
    torch.manual_seed(0)
    model, a, b = EDMDenoiser(NET2), EDMDenoiser(NET2), EDMDenoiser(NET2)
    b.load_state_dict(a.state_dict())
    calls = []
    orig = torch._foreach_lerp_
    try:
        torch._foreach_lerp_ = lambda *args: (calls.append(len(args[0])), orig(*args))[1]
        ema_update(a, model, 0.9, fused=True)
        assert calls == [len(list(model.parameters()))]   # one call for all parameters
        ema_update(b, model, 0.9, fused=False)
        assert len(calls) == 1
    finally:
        torch._foreach_lerp_ = orig
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert _max_diff(_train(fused_ema=False).model, reference[2].model) == 0.0


# -- torch.compile (guarded) --------------------------------------------------------------------

def test_compile_falls_back_with_one_logged_line(monkeypatch, caplog, reference):
    def broken(module, **kw):
        def call(*a, **k):
            raise RuntimeError("inductor: no C++ compiler\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="ambient_med"):
        res = _train(compile="default")
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "uncompiled" in lines[0]
    assert _max_diff(res.model, reference[2].model) == 0.0


def test_compile_is_used_for_every_call_and_warmed_on_all_shapes(monkeypatch, reference):
    """A stand-in compiler that records calls: the warm-up before the first step sees every shape
    and grad mode of the steps (the cache refresh's probability-flow calls on 1 image without
    gradient; batch 4 ambient + 2 distillation targets with gradient), and every loss call goes
    through the compiled callable."""
    seen, modes = [], []

    def fake(module, mode=None, **kw):
        modes.append(mode)

        def call(x, sigma):
            seen.append((x.shape[0], torch.is_grad_enabled()))
            return module(x, sigma)
        return call

    monkeypatch.setattr(torch, "compile", fake)
    res = _train(compile="max-autotune")
    assert modes == ["max-autotune"]
    # distill_steps=4 levels: 3 Heun steps (6 calls of 1) + the batched call (4 ambient + 2 distill);
    # 0.0625 x 4 images are due per step, so the (empty) cache is refreshed by the warm-up and the
    # first step, and not again within 4 steps
    refresh, step = [(1, False)] * 6, [(6, True)]
    assert seen == (refresh + step) * 2 + step * 3        # warm-up + 4 steps
    assert _max_diff(res.model, reference[2].model) == 0.0


@cuda
def test_compile_on_cuda_matches_eager():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = _train(device="cuda", mixed_precision=False)
    comp = _train(device="cuda", mixed_precision=False, compile="default")
    assert _max_diff(eager.model, comp.model) < 1e-3


# -- bf16 autocast (CUDA) -----------------------------------------------------------------------

@cuda
def test_mixed_precision_runs_the_network_in_bf16_on_cuda():
    dtypes = []
    torch.manual_seed(0)
    model = EDMDenoiser(NET2)
    model.unet.conv_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    res = train(model, _data(), LOSS, TrainConfig(steps=4, batch_size=4, log_every=2,
                                                  lr_warmup=2, mixed_precision=True),
                device="cuda")
    assert dtypes and set(dtypes) == {torch.bfloat16}
    full = _train(device="cuda", mixed_precision=False)
    assert _max_diff(res.model, full.model) < 5e-2


def test_mixed_precision_is_a_no_op_on_cpu(reference):
    assert _max_diff(_train(mixed_precision=False).model, reference[2].model) == 0.0


# -- the consistency pair is one batched call ---------------------------------------------------

def test_consistency_pair_and_ambient_term_share_one_call_and_match_separate_calls():
    torch.manual_seed(0)
    model = EDMDenoiser(NET2).eval()
    y, sn = torch.randn(8, 1, 16, 16), torch.full((8,), 0.5)
    calls = []

    def counted(x, s):
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return model(x, s)

    def separate(x, s):  # every call split into single images: no batching at all
        return torch.cat([model(x[i:i + 1], s[i:i + 1]) for i in range(x.shape[0])])

    a = objective_loss(counted, y, sn, LOSS, generator=torch.Generator().manual_seed(3))
    k = 2  # consistency_fraction 0.25 of 8
    assert calls[-1] == (8 + 2 * k, True) and sum(g for _, g in calls) == 1
    b = objective_loss(separate, y, sn, LOSS, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    for key in a.parts:
        torch.testing.assert_close(a.parts[key], b.parts[key], rtol=1e-5, atol=1e-6)
