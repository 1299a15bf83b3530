"""Replay buffer and offline/online mixer: known answers on tiny hand-made episodes."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from conftest import make_episode

from lwd.data.replay import MixedReplay, ReplayBuffer
from lwd.data.store import EpisodeStore
from lwd.types import Episode, Source


class FakeEncoder:
    """A deterministic ``width``-D embedding per string; counts the strings it embedded."""

    def __init__(self, width: int = 4) -> None:
        self.width = width
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.width) for t in texts
        ]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.width)


def tiny_episode(
    num_steps: int,
    *,
    name: str = "ep0",
    success: bool = False,
    sources: Sequence[int] | None = None,
    versions: Sequence[int] | None = None,
    images: bool = False,
    instruction: str = "open the drawer",
    state_dim: int = 3,
) -> Episode:
    """States ``s_t = t`` (every entry), actions ``a_t = (t, -t)``; reward 1 at the end if success."""
    t = num_steps
    rewards = np.zeros(t, np.float32)
    if success and t:
        rewards[-1] = 1.0
    steps = np.arange(t, dtype=np.float32)
    return Episode(
        episode_id=name,
        robot_id="robot-0",
        task="open-drawer",
        instruction=instruction,
        states=np.repeat(np.arange(t + 1, dtype=np.float32)[:, None], state_dim, axis=1),
        actions=np.stack([steps, -steps], axis=1),
        proposals=np.stack([steps, -steps], axis=1),
        rewards=rewards,
        sources=np.asarray(sources if sources is not None else [Source.DEMO] * t, np.uint8),
        policy_versions=np.asarray(versions if versions is not None else [0] * t, np.int32),
        success=success,
        terminated=success,
        progress=1.0 if success else 0.0,
        cycle_time_s=0.05 * t,
        images=(
            np.arange(t + 1, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 3), np.uint8)
        )
        if images
        else None,
    )


def buffer(horizon: int = 2, n_step: int = 2, gamma: float = 0.5, **kw) -> ReplayBuffer:
    return ReplayBuffer(horizon, n_step, gamma, kw.pop("encoder", FakeEncoder()), **kw)


def all_steps(buf: ReplayBuffer, episode: int = 0):
    t = buf.episode_info(episode).num_steps
    return buf.batch_at([episode] * t, np.arange(t))


def test_n_step_return_discount_and_next_state_by_hand():
    # T=7, H=2, n=2 -> nH=4; reward 1 on step 6; gamma=0.5.
    buf = buffer()
    buf.add_episodes([tiny_episode(7, success=True)])
    b = all_steps(buf)
    # t=0..2 bootstrap from s_{t+4}; t=3..6 reach the end: return truncated, no bootstrap.
    np.testing.assert_allclose(b.reward.numpy(), [0, 0, 0, 0.125, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(b.discount.numpy(), [0.0625] * 3 + [0.0] * 4)
    np.testing.assert_array_equal(b.next_state[:, 0].numpy(), [4, 5, 6, 7, 7, 7, 7])
    np.testing.assert_array_equal(b.state[:, 0].numpy(), np.arange(7))
    assert b.reward.dtype == torch.float32 and b.discount.dtype == torch.float32


def test_time_limit_end_is_terminal_too():
    buf = buffer()
    buf.add_episodes([tiny_episode(7, success=False)])
    b = all_steps(buf)
    np.testing.assert_array_equal(b.reward.numpy(), np.zeros(7))
    np.testing.assert_allclose(b.discount.numpy(), [0.0625] * 3 + [0.0] * 4)


def test_one_step_backup_and_window_longer_than_episode():
    buf = buffer(horizon=1, n_step=1, gamma=0.9)
    buf.add_episodes([tiny_episode(3, success=True)])
    b = all_steps(buf)
    np.testing.assert_allclose(b.reward.numpy(), [0, 0, 1])
    np.testing.assert_allclose(b.discount.numpy(), [0.9, 0.9, 0.0])
    np.testing.assert_array_equal(b.next_state[:, 0].numpy(), [1, 2, 3])

    long = buffer(horizon=4, n_step=3, gamma=0.5)  # nH=12 > T=3
    long.add_episodes([tiny_episode(3, success=True)])
    b = all_steps(long)
    np.testing.assert_allclose(b.reward.numpy(), [0.25, 0.5, 1.0])
    np.testing.assert_array_equal(b.discount.numpy(), [0, 0, 0])
    np.testing.assert_array_equal(b.next_state[:, 0].numpy(), [3, 3, 3])


def test_takeover_ends_the_autonomous_attempt_as_a_failure():
    # T=8, H=2, n=2 (nH=4), gamma=0.5; sources A A A I I A A D; success at the end.
    a, i, d = Source.AUTONOMOUS, Source.INTERVENTION, Source.DEMO
    ep = tiny_episode(8, success=True, sources=[a, a, a, i, i, a, a, d])
    plain, marked = buffer(), buffer(takeover_as_failure=True)
    for buf in (plain, marked):
        buf.add_episodes([ep])
    b, m = all_steps(plain), all_steps(marked)
    # Steps 0-2 (takeover at 3, within nH): return truncated at the takeover, no bootstrap.
    np.testing.assert_array_equal(m.reward.numpy(), [0, 0, 0] + list(b.reward.numpy()[3:]))
    np.testing.assert_array_equal(m.discount.numpy(), [0, 0, 0] + list(b.discount.numpy()[3:]))
    np.testing.assert_array_equal(m.next_state[:, 0].numpy(), [3, 3, 3, 7, 8, 8, 8, 8])
    # Everything else, and the executed chunks, are the plain semantics.
    np.testing.assert_array_equal(m.actions.numpy(), b.actions.numpy())
    np.testing.assert_array_equal(m.reward.numpy()[3:], [0, 0.125, 0.25, 0.5, 1.0])

    far = buffer(horizon=1, n_step=1, takeover_as_failure=True)  # nH=1: only the last step
    far.add_episodes([ep])
    np.testing.assert_array_equal(all_steps(far).discount.numpy()[:3], [0.5, 0.5, 0.0])


def test_cut_at_source_change_bootstraps_where_the_source_changes():
    # T=6, H=2, n=2 (nH=4), gamma=0.5; sources A A I I A A; success (reward 1 on step 5).
    a, i = Source.AUTONOMOUS, Source.INTERVENTION
    ep = tiny_episode(6, success=True, sources=[a, a, i, i, a, a])
    plain, cut = buffer(), buffer(cut_at_source_change=True)
    for buf in (plain, cut):
        buf.add_episodes([ep])
    b, c = all_steps(plain), all_steps(cut)
    np.testing.assert_allclose(b.reward.numpy(), [0, 0, 0.125, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(b.discount.numpy(), [0.0625, 0.0625, 0, 0, 0, 0])
    # Windows stop at the next change (steps 2, 2, 4, 4) and bootstrap with gamma^m there;
    # the last segment has no change and reaches the end: truncated return, no bootstrap.
    np.testing.assert_allclose(c.reward.numpy(), [0, 0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(c.discount.numpy(), [0.25, 0.5, 0.25, 0.5, 0, 0])
    np.testing.assert_array_equal(c.next_state[:, 0].numpy(), [2, 2, 4, 4, 6, 6])
    np.testing.assert_array_equal(c.actions.numpy(), b.actions.numpy())

    # With takeover_as_failure too, an autonomous window that meets the takeover ends there.
    both = buffer(cut_at_source_change=True, takeover_as_failure=True)
    both.add_episodes([ep])
    np.testing.assert_allclose(all_steps(both).discount.numpy(), [0, 0, 0.25, 0.5, 0, 0])

    # A single-source episode is unchanged by the cut.
    one, one_cut = buffer(), buffer(cut_at_source_change=True)
    for buf in (one, one_cut):
        buf.add_episodes([tiny_episode(7, success=True)])
    for field in ("reward", "discount", "next_state"):
        np.testing.assert_array_equal(
            getattr(all_steps(one), field).numpy(), getattr(all_steps(one_cut), field).numpy()
        )


def test_actions_are_padded_by_repeating_the_last_action():
    buf = buffer(horizon=3)
    buf.add_episodes([tiny_episode(4)])
    b = all_steps(buf)
    assert b.actions.shape == (4, 3, 2) and b.actions.dtype == torch.float32
    np.testing.assert_array_equal(
        b.actions[..., 0].numpy(), [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]]
    )
    np.testing.assert_array_equal(b.actions[..., 1].numpy(), -b.actions[..., 0].numpy())


def test_provenance_fields_and_language():
    enc = FakeEncoder()
    buf = buffer(encoder=enc, online=True)
    first = tiny_episode(2, name="a", instruction="stack the cubes")
    mixed = tiny_episode(
        4,
        name="b",
        sources=[Source.AUTONOMOUS, Source.INTERVENTION, Source.INTERVENTION, Source.AUTONOMOUS],
        versions=[3, 3, 0, 4],
    )
    buf.add_episodes([first, mixed])
    b = buf.batch_at([1, 1, 1, 1, 0], [0, 1, 2, 3, 1])
    np.testing.assert_array_equal(b.source.numpy(), [1, 2, 2, 1, 0])
    np.testing.assert_array_equal(b.policy_version.numpy(), [3, 3, 0, 4, 0])
    np.testing.assert_array_equal(b.episode.numpy(), [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(b.step.numpy(), [0, 1, 2, 3, 1])
    np.testing.assert_array_equal(b.state[:, 0].numpy(), [0, 1, 2, 3, 1])
    assert b.online.dtype == torch.bool and bool(b.online.all())
    for name in ("source", "policy_version", "episode", "step"):
        assert getattr(b, name).dtype == torch.int64
    np.testing.assert_array_equal(b.lang[0].numpy(), FakeEncoder().encode(["open the drawer"])[0])
    np.testing.assert_array_equal(b.lang[4].numpy(), FakeEncoder().encode(["stack the cubes"])[0])
    assert b.image is None and b.next_image is None
    assert buf.episode_info(1).episode_id == "b" and buf.episode_info(1).num_steps == 4


def test_instructions_are_embedded_once_each():
    enc = FakeEncoder()
    buf = buffer(encoder=enc)
    buf.add_episodes([tiny_episode(2, name=f"e{i}", instruction=f"task {i % 2}") for i in range(6)])
    buf.add_episodes([tiny_episode(2, name="late", instruction="task 7")])
    buf.add_episodes([tiny_episode(2, name="again", instruction="task 1")])
    assert enc.seen == ["task 0", "task 1", "task 7"]
    assert buf.instructions == ("task 0", "task 1", "task 7") and buf.lang_dim == 4


def test_sample_is_uniform_over_steps_and_matches_batch_at():
    buf = buffer()
    buf.add_episodes([tiny_episode(1, name="short"), tiny_episode(3, name="long")])
    assert len(buf) == 4 and buf.num_episodes == 2
    episode, step = buf.sample_indices(8000, np.random.default_rng(0))
    counts = np.bincount(episode * 3 + step, minlength=6)[[0, 3, 4, 5]]
    np.testing.assert_allclose(counts / 8000, 0.25, atol=0.02)

    b = buf.sample(64, np.random.default_rng(1))
    episode, step = buf.sample_indices(64, np.random.default_rng(1))
    again = buf.batch_at(episode, step)
    for name in ("state", "actions", "reward", "discount", "next_state", "episode", "step"):
        torch.testing.assert_close(getattr(b, name), getattr(again, name))


def test_growing_keeps_earlier_samples_identical_and_is_amortised():
    buf = buffer()
    buf.add_episodes([tiny_episode(5, name="a", success=True), tiny_episode(3, name="b")])
    episode, step = [0, 0, 1, 0], [0, 4, 2, 2]
    before = buf.batch_at(episode, step)
    reallocations, allocated = 0, buf.allocated_nbytes
    for i in range(200):
        buf.add_episodes([tiny_episode(2 + i % 5, name=f"new{i}", success=i % 2 == 0)])
        reallocations += buf.allocated_nbytes != allocated
        allocated = buf.allocated_nbytes
    after = buf.batch_at(episode, step)
    for name in ("state", "lang", "actions", "reward", "discount", "next_state", "source"):
        torch.testing.assert_close(getattr(before, name), getattr(after, name))
    assert buf.num_episodes == 202
    # Geometric growth: about log_1.5(100) copies per column group, not one per call.
    assert reallocations < 40
    assert buf.allocated_nbytes >= buf.nbytes


def test_skips_empty_and_duplicate_episodes():
    buf = buffer()
    assert buf.add_episodes([tiny_episode(0, name="empty")]) == 0
    assert buf.add_episodes([tiny_episode(3, name="a"), tiny_episode(3, name="a")]) == 1
    assert buf.add_episodes([tiny_episode(3, name="a")]) == 0
    assert len(buf) == 3 and buf.num_episodes == 1


def test_images_are_stored_as_uint8_frames():
    buf = buffer()
    buf.add_episodes([tiny_episode(7, images=True)])
    b = all_steps(buf)
    assert b.image.dtype == torch.uint8 and b.image.shape == (7, 2, 3, 3)
    np.testing.assert_array_equal(b.image[:, 0, 0, 0].numpy(), np.arange(7))
    np.testing.assert_array_equal(b.next_image[:, 0, 0, 0].numpy(), [4, 5, 6, 7, 7, 7, 7])
    assert buf.image_shape == (2, 3, 3)
    assert buf._images.data.dtype == np.uint8


def test_errors_for_mismatched_dims_and_images():
    buf = buffer()
    buf.add_episodes([tiny_episode(3, name="a")])
    with pytest.raises(ValueError, match="state rows of shape \\(3,\\).*one embodiment"):
        buf.add_episodes([tiny_episode(3, name="b", state_dim=4)])
    with pytest.raises(ValueError, match="has images, but this buffer holds episodes without"):
        buf.add_episodes([tiny_episode(3, name="c", images=True)])
    with pytest.raises(ValueError, match="images must be in all episodes"):
        buffer().add_episodes([tiny_episode(3, name="d", images=True), tiny_episode(3, name="e")])
    # A failed call adds nothing.
    with pytest.raises(ValueError):
        buf.add_episodes([tiny_episode(3, name="f"), tiny_episode(3, name="g", state_dim=5)])
    assert buf.num_episodes == 1
    with pytest.raises(ValueError, match="empty"):
        buffer().sample(4, np.random.default_rng(0))
    with pytest.raises(IndexError, match="step 3 is outside episode 0, which has 3 steps"):
        buf.batch_at([0], [3])
    with pytest.raises(ValueError, match="n_step must be >= 1"):
        buffer(n_step=0)


def test_summary_and_nbytes():
    buf = buffer()
    eps = [
        tiny_episode(4, name="a", success=True),
        tiny_episode(2, name="b", sources=[Source.PLAY] * 2),
    ]
    buf.add_episodes(eps)
    s = buf.summary()
    assert s["transitions"] == 6 and s["episodes"] == 2 and s["success_rate"] == 0.5
    assert s["source_steps"] == {"demo": 4, "autonomous": 0, "intervention": 0, "play": 2}
    # states 8 rows x 3 x 4 B, actions 6 x 2 x 4 B, rewards/versions/episode/steps-to-takeover
    # 6 x 4 B each, sources 6 B, lang 1 x 4 x 4 B, per episode start 8 + length 4 +
    # instruction 4 + success 1.
    assert buf.nbytes == 96 + 48 + 96 + 6 + 16 + 2 * 17
    assert buffer().summary()["success_rate"] is None


def test_from_store(tmp_path):
    store = EpisodeStore(tmp_path / "store")
    for seed in range(3):
        store.put(make_episode(5 + seed, seed=seed, success=seed == 1))
    version = store.snapshot()
    store.put(make_episode(4, seed=9))
    enc = FakeEncoder(8)
    buf = ReplayBuffer.from_store(store, version, encoder=enc, horizon=5, n_step=1, gamma=0.99)
    assert buf.num_episodes == 3 and len(buf) == 5 + 6 + 7
    b = buf.sample(16, np.random.default_rng(0))
    assert b.state.shape == (16, 78) and b.actions.shape == (16, 5, 5) and b.lang.shape == (16, 8)
    assert buf.summary()["success_rate"] == pytest.approx(1 / 3)


def mixer_buffers(images: bool = False):
    enc = FakeEncoder()
    offline = buffer(n_step=2, encoder=enc)
    offline.add_episodes([tiny_episode(7, name="off", success=True, images=images)])
    online = buffer(n_step=1, encoder=enc, online=True)
    return offline, online


def test_mixer_takes_an_exact_online_share():
    offline, online = mixer_buffers()
    online.add_episodes([tiny_episode(5, name="on", sources=[Source.AUTONOMOUS] * 5)])
    rng = np.random.default_rng(0)
    for fraction, expected in ((0.5, 128), (0.3, 77), (0.0, 0), (1.0, 256)):
        mix = MixedReplay(offline, online, fraction)
        b = mix.sample(256, rng)
        assert b.size == 256 and mix.last_online_count == expected
        assert int(b.online.sum()) == expected
        assert not b.online[: 256 - expected].any()  # offline first
        np.testing.assert_array_equal(b.source[256 - expected :].numpy(), 1)
    # Per-sample n-step: online samples use n=1 (nH=2), offline n=2 (nH=4).
    b = MixedReplay(offline, online, 0.5).sample(64, rng)
    discount = b.discount.numpy()
    assert set(np.round(discount[b.online.numpy()], 4)) <= {0.25, 0.0}
    assert set(np.round(discount[~b.online.numpy()], 4)) <= {0.0625, 0.0}


def test_mixer_falls_back_to_offline_while_online_is_empty():
    offline, online = mixer_buffers()
    mix = MixedReplay(offline, online, 0.5)
    b = mix.sample(32, np.random.default_rng(0))
    assert b.size == 32 and mix.last_online_count == 0 and not b.online.any()


def test_mixer_errors():
    offline, online = mixer_buffers(images=True)
    online.add_episodes([tiny_episode(3, name="on")])
    with pytest.raises(ValueError, match="image shape.*images in both buffers or in neither"):
        MixedReplay(offline, online, 0.5).sample(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="online=True"):
        MixedReplay(online, offline, 0.5)
    with pytest.raises(ValueError, match="chunk length"):
        MixedReplay(offline, buffer(horizon=3, online=True), 0.5)
    empty = buffer()
    with pytest.raises(ValueError, match="offline buffer is empty"):
        MixedReplay(empty, online, 0.5).sample(8, np.random.default_rng(0))
    wide = buffer(encoder=FakeEncoder(6), online=True)
    wide.add_episodes([tiny_episode(3, name="w")])
    plain, _ = mixer_buffers()
    with pytest.raises(
        ValueError, match="instruction embedding width is 4 but the online one is 6"
    ):
        MixedReplay(plain, wide, 0.5).sample(8, np.random.default_rng(0))
