"""The online learner: committed fleet snapshots -> 1:1 replay -> Agent.update -> publish.

Usage loop (``lwd learner`` wires a :class:`HttpSource` and :class:`HttpSink` to a server)::

    learner = OnlineLearner(cfg, init, offline_data, source, sink, out, encoder)
    learner.run(stop)        # until stop is set or cfg.max_updates
      every refresh_every updates: commit a snapshot, add its new episodes to the online buffer
      every update:            batch = 1:1 offline:online (all offline while no fleet data)
      every publish_every:     publish the acting policy (robots load it between episodes)
      every checkpoint_every:  a complete checkpoint (agent, RNGs, snapshots consumed so far)

A killed learner resumes exactly: its checkpoint records which snapshot versions were added at
which update, and the online buffer is rebuilt from the same snapshots in the same order (the
store is append-only and snapshots never change), so batches and losses continue as if it had
never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from lwd.agent import Agent
from lwd.config import OfflineConfig, OnlineConfig, from_dict, refuse_other_config, to_dict
from lwd.data.replay import MixedReplay, ReplayBuffer
from lwd.data.store import EpisodeStore
from lwd.learner.offline import (
    build_offline_replay,
    commit_checkpoint,
    latest_checkpoint,
    load_agent,
)
from lwd.policy.checkpoint import load_policy
from lwd.policy.flow import TextEncoder
from lwd.types import Episode

CONFIG_FILE = "online_config.json"


class SnapshotSource(Protocol):
    """Where fleet episodes come from: committed, immutable snapshots of an episode store."""

    def commit(self) -> int | None:
        """Commit a snapshot of everything stored now; its version (None: nothing stored)."""
        ...

    def new_episodes(self, after: int | None, version: int) -> list[Episode]:
        """Episodes in snapshot ``version`` but not in snapshot ``after``, in commit order."""
        ...


class PolicySink(Protocol):
    """Where new policy versions go (a registry, local or behind the server)."""

    def publish(self, checkpoint_dir: Path) -> int:
        """Publish a policy checkpoint directory; returns its version."""
        ...


class LocalSource:
    """A :class:`SnapshotSource` over an :class:`EpisodeStore` on this machine."""

    def __init__(self, store: EpisodeStore) -> None:
        self.store = store

    def commit(self) -> int | None:
        return self.store.snapshot() if len(self.store) else None

    def new_episodes(self, after: int | None, version: int) -> list[Episode]:
        seen = set(self.store.episode_ids(after)) if after is not None else set()
        return [self.store.get(i) for i in self.store.episode_ids(version) if i not in seen]


class HttpSource:
    """A :class:`SnapshotSource` over the fleet server's HTTP API."""

    def __init__(self, client) -> None:
        self.client = client

    def commit(self) -> int | None:
        return self.client.commit_snapshot()

    def new_episodes(self, after: int | None, version: int) -> list[Episode]:
        ids = self.client.snapshot_episode_ids(version, after=after)
        return [self.client.get_episode(i) for i in ids]


class HttpSink:
    """A :class:`PolicySink` that uploads to the fleet server's registry."""

    def __init__(self, client) -> None:
        self.client = client

    def publish(self, checkpoint_dir: Path) -> int:
        return int(self.client.publish_policy(checkpoint_dir).version)


class RegistrySink:
    """A :class:`PolicySink` writing to a :class:`~lwd.fleet.registry.PolicyRegistry` directly."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def publish(self, checkpoint_dir: Path) -> int:
        return int(self.registry.publish(checkpoint_dir))


_ARCHITECTURE = (
    "value",
    "num_atoms",
    "v_min",
    "v_max",
    "critic_heads",
    "critic_width",
    "critic_depth",
)


def adopt_architecture(
    cfg: OnlineConfig, init: str | Path, *, keep_acting: bool = True
) -> OnlineConfig:
    """``cfg`` with the value/critic architecture of the offline run ``init`` (if it is one).

    Online RL continues the offline networks, so their shapes are not a free choice; the
    online hyperparameters (tau_base, learning rates, lambda) stay as given. With
    ``keep_acting`` the run also acts as the offline run did (its ``best_of_n``): the fleet's
    first version is the offline run's acting policy, so dropping its critic ranking there
    would start the online stage below where the offline stage ended. Pass
    ``keep_acting=False`` when ``cfg`` sets ``best_of_n`` on purpose.
    """
    path = Path(init) / "offline_config.json"
    if not path.is_file():
        return cfg
    offline = from_dict(OfflineConfig, json.loads(path.read_text())).agent
    names = _ARCHITECTURE + (("best_of_n",) if keep_acting else ())
    arch = {name: getattr(offline, name) for name in names}
    return dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, **arch))


UpdateCallback = Callable[[int, dict, dict], None]
"""``on_update(step, metrics, status)``; status has snapshot, online transitions, published."""

PHASES = ("update", "sample", "refresh", "publish", "checkpoint")
"""Where the learner loop's wall time goes (``status()["share_<phase>"]``)."""


class OnlineLearner:
    """Online DIVL + QAM from an offline run (or an SFT checkpoint) while the fleet deploys.

    Args:
        cfg: the online run.
        init: an offline run directory (its latest checkpoint gives policy, reference, value
            and critic) or an SFT policy checkpoint (value and critic start from scratch).
        offline_data: the offline episode store (half of every batch).
        source: committed fleet snapshots.
        sink: where published policies go.
        out: run directory (resumed if it holds a checkpoint of the same config).
        encoder: instruction embedder.
    """

    def __init__(
        self,
        cfg: OnlineConfig,
        init: str | Path,
        offline_data: str | Path,
        source: SnapshotSource,
        sink: PolicySink,
        out: str | Path,
        encoder: TextEncoder,
        known_tasks=None,
    ) -> None:
        self.cfg, self.source, self.sink, self.out = cfg, source, sink, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        config_path = self.out / CONFIG_FILE
        refuse_other_config(config_path, cfg, "an online run")
        init = Path(init)
        init_ckpt = latest_checkpoint(init) if (init / "LATEST").is_file() else None
        reference = load_policy(init_ckpt / "reference" if init_ckpt else init)
        self.agent = Agent(cfg.agent, reference, seed=cfg.seed)
        if init_ckpt is not None:
            load_agent(init_ckpt, self.agent, training_state=False)
        horizon = reference.cfg.chunk
        offline_cfg = OfflineConfig(n_step=cfg.n_step, gamma=cfg.gamma)
        self.offline = build_offline_replay(
            offline_cfg,
            Path(offline_data),
            encoder,
            horizon,
            known_tasks,
            cut_at_source_change=cfg.cut_at_source_change,
        )
        self.online = ReplayBuffer(
            horizon,
            cfg.n_step,
            cfg.gamma,
            encoder,
            online=True,
            takeover_as_failure=cfg.takeover_as_failure,
            cut_at_source_change=cfg.cut_at_source_change,
        )
        self.replay = MixedReplay(self.offline, self.online, cfg.online_fraction)
        self.rng = np.random.default_rng(cfg.seed)
        self.snapshots: list[tuple[int, int]] = []  # (update, version) in the order added
        self.published: list[tuple[int, int]] = []  # (update, policy version)
        self.step = 0
        self._refresh_due = 0.0  # monotonic time of the next time-based refresh
        self.seconds = dict.fromkeys(PHASES, 0.0)  # per phase, since run() began
        latest = latest_checkpoint(self.out)
        if latest is not None:
            state = load_agent(latest, self.agent, self.rng)
            self.step = state.step
            self._rebuild_online(state.extra.get("snapshots", []))
            self.published = [tuple(p) for p in state.extra.get("published", [])]
        config_path.write_text(json.dumps(to_dict(cfg), indent=2))
        self.init = str(init.resolve())

    # --------------------------------------------------------------------------- data
    def _rebuild_online(self, snapshots: list) -> None:
        after = None
        for step, version in snapshots:
            self.online.add_episodes(self.source.new_episodes(after, version))
            self.snapshots.append((int(step), int(version)))
            after = version

    def refresh(self) -> int:
        """Commit a snapshot and add its new episodes; returns how many were added."""
        self._refresh_due = time.monotonic() + (self.cfg.refresh_s or 0.0)
        version = self.source.commit()
        last = self.snapshots[-1][1] if self.snapshots else None
        if version is None or version == last:
            return 0
        added = self.online.add_episodes(self.source.new_episodes(last, version))
        self.snapshots.append((self.step, version))
        return added

    # ------------------------------------------------------------------------- publish
    def publish(self) -> int:
        """Publish the acting policy; returns the new version."""
        tmp = self.out / "publish.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.agent.save_acting_policy(tmp, extra=dict(trainer="online", step=self.step))
        version = self.sink.publish(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        self.published.append((self.step, version))
        return version

    def checkpoint(self) -> None:
        extra = dict(
            trainer="online",
            init=self.init,
            snapshots=[list(s) for s in self.snapshots],
            published=[list(p) for p in self.published],
        )
        commit_checkpoint(
            self.out, self.step, self.agent, self.rng, extra, self.cfg.keep_checkpoints
        )

    # ---------------------------------------------------------------------------- loop
    def run(
        self,
        stop: threading.Event | None = None,
        on_update: UpdateCallback | None = None,
        *,
        until: int | None = None,
    ):
        """Update until ``stop`` is set, ``cfg.max_updates`` or ``until`` updates in all.

        ``until`` lets a caller run a fixed number of updates and come back (the synchronous
        fleet harness: ``run(until=learner.step + n)`` once per round). Checkpoints on the way
        out.
        """
        cfg = self.cfg
        if self.step == 0 and not self.published:
            self.publish()  # version 1 = the starting policy, so robots have something to run
        t0, start = time.perf_counter(), self.step
        self.seconds = dict.fromkeys(PHASES, 0.0)
        timed = self._timed
        try:
            while not (stop is not None and stop.is_set()):
                if cfg.max_updates and self.step >= cfg.max_updates:
                    break
                if until is not None and self.step >= until:
                    break
                due = cfg.refresh_s is not None and time.monotonic() >= self._refresh_due
                if self.step % cfg.refresh_every == 0 or due:
                    timed("refresh", self.refresh)
                batch = timed("sample", self.replay.sample, cfg.batch_size, self.rng)
                metrics = timed("update", self.agent.update, batch)
                self.step += 1
                # during actor warm-up the acting policy is still the start (unless it acts
                # best-of-N: then its ranking critic learns meanwhile): nothing to ship
                acting = self.agent.cfg
                moved = self.agent.updates > acting.actor_warmup or acting.best_of_n > 1
                if self.step % cfg.publish_every == 0 and moved:
                    timed("publish", self.publish)
                if self.step % cfg.checkpoint_every == 0:
                    timed("checkpoint", self.checkpoint)
                if on_update is not None:
                    on_update(self.step, metrics, self.status(t0, start))
        finally:
            if self.step > start and self.step % cfg.checkpoint_every:  # else just written
                self.checkpoint()
        return self.status(t0, start)

    def _timed(self, phase: str, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[phase] += time.perf_counter() - t

    def status(self, t0: float, start: int) -> dict:
        """Progress since ``run`` began, with the share of wall time each phase took."""
        elapsed = max(time.perf_counter() - t0, 1e-9)
        return dict(
            step=self.step,
            snapshot=self.snapshots[-1][1] if self.snapshots else None,
            online_transitions=len(self.online),
            online_in_batch=self.replay.last_online_count,
            published=self.published[-1][1] if self.published else None,
            updates_per_s=(self.step - start) / elapsed,
            **{f"share_{k}": v / elapsed for k, v in self.seconds.items()},
        )
