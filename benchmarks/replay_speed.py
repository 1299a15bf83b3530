"""Replay buffer storage and sampling speed at fleet8 shapes (state 78, action 5, H=5).

    OMP_NUM_THREADS=1 python benchmarks/replay_speed.py [--quick]

Builds a buffer of ~1M transitions (2000 synthetic episodes of 500 steps) and reports bytes per
transition and the time to sample a batch of 256 n=10 transitions on the CPU with one thread
(median and p99), plus an n=1 buffer and a 1:1 offline/online mix. The episodes are random:
this measures storage and gathering, which do not depend on what the numbers mean.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import setup_process, write_result  # noqa: E402

STATE_DIM, ACTION_DIM, HORIZON, LANG_DIM = 78, 5, 5, 384
TASKS = [f"task-{i}" for i in range(8)]


class FakeEncoder:
    """A deterministic 384-D embedding per instruction (the real encoder is not measured here)."""

    def encode(self, texts):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=LANG_DIM) for t in texts]
        return np.asarray(rows, dtype=np.float32)


def synthetic_episodes(count: int, steps: int, seed: int, prefix: str):
    """Random episodes: sparse success reward, demo / autonomous (+interventions) / play."""
    from lwd.types import Episode, Source

    rng = np.random.default_rng(seed)
    for i in range(count):
        kind = rng.choice([Source.DEMO, Source.AUTONOMOUS, Source.PLAY], p=[0.3, 0.5, 0.2])
        sources = np.full(steps, kind, np.uint8)
        versions = np.zeros(steps, np.int32)
        if kind == Source.AUTONOMOUS:
            versions[:] = 1 + i % 5
            start = rng.integers(0, steps - 50)
            sources[start : start + 50] = Source.INTERVENTION
            versions[start : start + 50] = 0
        success = bool(kind != Source.PLAY and rng.random() < 0.6)
        rewards = np.zeros(steps, np.float32)
        rewards[-1] = float(success)
        actions = rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32)
        task = TASKS[i % len(TASKS)]
        yield Episode(
            episode_id=f"{prefix}{i:06d}",
            robot_id=f"robot-{i % 8}",
            task=task,
            instruction=f"please do {task}",
            states=rng.standard_normal((steps + 1, STATE_DIM), dtype=np.float32),
            actions=actions,
            proposals=actions,
            rewards=rewards,
            sources=sources,
            policy_versions=versions,
            success=success,
            terminated=success,
            progress=float(success),
            cycle_time_s=steps / 30,
        )


def timed_samples(sample, reps: int) -> tuple[float, float]:
    for _ in range(10):
        sample()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        sample()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="200 episodes instead of 2000")
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()
    setup_process()
    import torch

    from lwd.data.replay import MixedReplay, ReplayBuffer

    torch.set_num_threads(1)
    episodes = 200 if args.quick else args.episodes
    encoder = FakeEncoder()
    offline = ReplayBuffer(HORIZON, n_step=10, gamma=0.99, encoder=encoder)
    # Add in groups, as snapshots would arrive; the arrays grow geometrically.
    build = 0.0
    group: list = []
    for ep in synthetic_episodes(episodes, args.steps, seed=0, prefix="off"):
        group.append(ep)
        if len(group) == 100:
            t = time.perf_counter()
            offline.add_episodes(group)
            build += time.perf_counter() - t
            group = []
    t = time.perf_counter()
    offline.add_episodes(group)
    build += time.perf_counter() - t
    del group

    online = ReplayBuffer(HORIZON, n_step=1, gamma=0.99, encoder=encoder, online=True)
    online.add_episodes(synthetic_episodes(20, args.steps, seed=1, prefix="on"))
    mix = MixedReplay(offline, online, online_fraction=0.5)

    rng = np.random.default_rng(0)
    b = 256
    n10 = timed_samples(lambda: offline.sample(b, rng), args.reps)
    n1 = timed_samples(lambda: online.sample(b, rng), args.reps)
    mixed = timed_samples(lambda: mix.sample(b, rng), args.reps)
    n = len(offline)
    metrics = {
        "transitions": n,
        "bytes_per_transition": offline.nbytes / n,
        "allocated_bytes_per_transition": offline.allocated_nbytes / n,
        "total_gb": offline.nbytes / 1e9,
        "allocated_gb": offline.allocated_nbytes / 1e9,
        "build_s": build,
        "build_us_per_transition": build / n * 1e6,
        "sample_ms_b256_n10": n10[0],
        "sample_p99_ms_b256_n10": n10[1],
        "sample_ms_b256_n1": n1[0],
        "sample_p99_ms_b256_n1": n1[1],
        "mixed_sample_ms_b256": mixed[0],
        "mixed_sample_p99_ms_b256": mixed[1],
    }
    for k, v in metrics.items():
        print(f"{k:>32}: {v:.3f}")
    write_result(
        "replay_speed",
        metrics,
        dict(
            data="synthetic random episodes (storage and sampling do not depend on the values)",
            episodes=episodes,
            steps_per_episode=args.steps,
            state_dim=STATE_DIM,
            action_dim=ACTION_DIM,
            horizon=HORIZON,
            lang_dim=LANG_DIM,
            instructions=len(TASKS),
            images=False,
            batch=b,
            reps=args.reps,
            offline_n_step=10,
            online_n_step=1,
            online_episodes=20,
            online_fraction=0.5,
            added_in_groups_of=100,
            device="cpu",
            torch_threads=1,
            targets="1M transitions < 2 GB; sample < 5 ms",
        ),
    )


if __name__ == "__main__":
    main()
