"""The self-distillation cache: its refresh schedule (``distill_every``) and its checkpoint state."""
import torch

from ambient_med.diffusion.distill import CleanCache
from ambient_med.diffusion.losses import LossConfig
from ambient_med.diffusion.objective import objective_loss


class Recorder(torch.nn.Module):
    """A denoiser that shrinks toward 0 and records the batch size and grad mode of each call."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, sigma):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.a * x


def test_refresh_runs_every_distill_every_steps_with_that_many_steps_of_images():
    cfg = LossConfig(sigma_data=1.0, consistency_start=0.0, distill_steps=3, distill_refresh=0.25,
                     distill_every=2)
    net, cache = Recorder(), CleanCache(16)
    y, sn = torch.randn(8, 1, 4, 4), torch.full((8,), 0.5)
    g = torch.Generator().manual_seed(0)
    refreshed = []
    for _ in range(5):
        net.calls.clear()
        objective_loss(net, y, sn, cfg, generator=g, cache=cache).loss.backward()
        refreshed.append([n for n, grad in net.calls if not grad])
    # 3 levels = 2 Heun steps = 4 no-grad calls on steps 0, 2, 4; the empty cache is filled on
    # step 0 with the 0.25 * 8 = 2 images due, then 0.25 * 2 * 8 = 4 every second step
    assert refreshed == [[2] * 4, [], [4] * 4, [], [4] * 4]
    assert cache.calls == 5 and cache.filled == 10
    # the batched call holds 8 ambient + 4 distillation targets on every step
    assert net.calls[-1] == (12, True)


def test_small_batches_refresh_whole_images_at_the_average_rate():
    """Batch 2 at distill_refresh 1/16: one image every 8 steps (not one image, half the
    batch, every step)."""
    cfg = LossConfig(sigma_data=1.0, consistency_start=0.0, distill_steps=2)
    net, cache = Recorder(), CleanCache(4)
    y, sn = torch.randn(2, 1, 4, 4), torch.full((2,), 0.5)
    steps_with_refresh = []
    for step in range(17):
        net.calls.clear()
        objective_loss(net, y, sn, cfg, cache=cache)
        if any(not grad for _, grad in net.calls):
            steps_with_refresh.append(step)
    assert steps_with_refresh == [0, 8, 16]


def test_refresh_takes_at_most_one_batch_and_state_round_trips():
    cfg = LossConfig(sigma_data=1.0, consistency_start=0.0, distill_steps=2, distill_refresh=1.0,
                     distill_every=2)
    net, cache = Recorder(), CleanCache(32)
    y, sn = torch.randn(8, 1, 4, 4), torch.full((8,), 0.5)
    for _ in range(3):
        objective_loss(net, y, sn, cfg, cache=cache)
    # steps 0 and 2 refresh; on step 2, 16 images are due and one batch of 8 is available
    assert cache.filled == 16 and cache.owed == 0.0   # a capped refresh drops what it lacks
    other = CleanCache(1)
    other.load_state_dict(cache.state_dict())
    assert (other.calls, other.filled, other.pos, other.capacity) == (3, 16, 16, 32)
    assert torch.equal(other.x, cache.x)
    legacy = {k: v for k, v in cache.state_dict().items() if k not in ("calls", "owed")}
    other.load_state_dict(legacy)
    assert other.calls == 0 and other.owed == 0.0


def test_distill_every_is_refused_for_other_variants_and_below_one():
    import pytest

    from ambient_med.diffusion.losses import inactive_keys

    assert "distill_every" in inactive_keys(LossConfig(consistency_variant="pair"))
    assert "distill_every" not in inactive_keys(LossConfig())
    with pytest.raises(ValueError, match="distill_every"):
        LossConfig(distill_every=0)
