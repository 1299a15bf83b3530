"""Offline RL from the SFT start: replay over a store snapshot -> ``Agent.update`` -> checkpoints.

Checkpoints are whole directories ``OUT/checkpoints/step-NNNNNNN`` (acting policy, the frozen
reference, value/critic/target weights, optimizers, RNGs and the step); ``OUT/LATEST`` names the
newest and is replaced atomically after the directory is complete, so a run killed at any point
resumes from the last complete checkpoint and continues with exactly the same batches, noise
and losses. ``OUT/policy`` always holds the newest acting policy (``lwd eval --policy OUT/policy``).
TensorBoard scalars go to ``OUT/tb`` (events past the resumed step are purged).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lwd.agent import Agent
from lwd.config import OfflineConfig, from_dict, refuse_other_config, to_dict
from lwd.data.dataset import select_episodes
from lwd.data.replay import ReplayBuffer
from lwd.data.store import EpisodeStore
from lwd.policy.checkpoint import (
    CheckpointError,
    TrainingState,
    load_module_weights,
    load_policy,
    load_training_state,
    save_module_weights,
    save_policy,
    save_training_state,
)
from lwd.policy.flow import TextEncoder

CONFIG_FILE = "offline_config.json"
LATEST_FILE = "LATEST"


StepCallback = Callable[[int, int, dict], None]
Evaluator = Callable[[Path, int], dict]
"""``evaluate(policy_dir, step) -> {name: number}`` (e.g. eval/avg_success)."""


def _checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    out = Path(out)
    pointer = out / LATEST_FILE
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which is missing; the run is damaged")
    return path


def save_agent(directory: Path, agent: Agent, np_rng: np.random.Generator, extra: dict) -> None:
    """Everything needed to resume ``agent`` exactly, into ``directory``."""
    agent.save_acting_policy(directory / "policy", extra=extra)
    save_policy(directory / "reference", agent.reference, extra={"role": "reference"})
    if agent.reference_bc is not None:
        save_policy(directory / "reference_bc", agent.reference_bc, extra={"role": "BC flow"})
    for name in ("value", "critic", "target_critic"):
        save_module_weights(directory / f"{name}.safetensors", getattr(agent, name))
    save_training_state(
        directory,
        agent.optimizers,
        agent.updates,
        generators={"agent": agent.generator, "sample": np_rng},
        extra=extra,
    )


def load_agent(
    directory: Path,
    agent: Agent,
    np_rng: np.random.Generator | None = None,
    *,
    training_state: bool = True,
) -> TrainingState | None:
    """Restore :func:`save_agent` output into a freshly built ``agent``.

    With ``training_state=False`` only the networks are loaded (a new run starting from
    another run's agent, e.g. online RL from the offline checkpoint); otherwise optimizers,
    RNGs and the update counter too, and the saved :class:`TrainingState` is returned.
    """
    saved = load_policy(directory / "policy")
    agent.policy.load_state_dict(saved.state_dict())
    ref = load_policy(directory / "reference")
    agent.reference.load_state_dict(ref.state_dict())
    if agent.reference_bc is not None:  # a run that starts from a frozen-reference one: f_ref
        bc_dir = directory / "reference_bc"
        bc = load_policy(bc_dir) if bc_dir.is_dir() else ref
        agent.reference_bc.load_state_dict(bc.state_dict())
    for name in ("value", "critic", "target_critic"):
        load_module_weights(directory / f"{name}.safetensors", getattr(agent, name))
    if not training_state:
        return None
    state = load_training_state(
        directory, agent.optimizers, generators={"agent": agent.generator, "sample": np_rng}
    )
    agent.updates = state.step
    return state


def commit_checkpoint(out: Path, step: int, agent: Agent, rng, extra: dict, keep: int) -> None:
    """Write a complete checkpoint directory, then point ``OUT/LATEST`` at it (atomically)."""
    final = _checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_agent(tmp, agent, rng, extra | {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer_tmp = out / (LATEST_FILE + ".tmp")
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, out / LATEST_FILE)  # the checkpoint exists only from here on
    agent.save_acting_policy(out / "policy", extra=extra | {"step": step})
    done = sorted(p for p in final.parent.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[: -max(keep, 1)]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def build_offline_replay(
    cfg: OfflineConfig,
    data_dir: Path,
    encoder: TextEncoder,
    horizon: int,
    known_tasks=None,
    *,
    cut_at_source_change: bool = False,
) -> ReplayBuffer:
    """The offline buffer: every episode of the latest snapshot made only of ``cfg.sources``
    (``cut_at_source_change``: see :class:`lwd.data.replay.ReplayBuffer`)."""
    if not (data_dir / "index.sqlite").is_file():
        raise FileNotFoundError(
            f"{data_dir} is not an episode store (no index.sqlite); create one with "
            f"`lwd data generate --out {data_dir}`"
        )
    episodes = select_episodes(EpisodeStore(data_dir, known_tasks=known_tasks), cfg.sources)
    if not episodes:
        raise ValueError(f"{data_dir} has no episodes made only of sources {cfg.sources}")
    replay = ReplayBuffer(
        horizon, cfg.n_step, cfg.gamma, encoder, cut_at_source_change=cut_at_source_change
    )
    replay.add_episodes(episodes)
    return replay


def train_offline(
    cfg: OfflineConfig,
    data_dir: str | Path,
    init: str | Path,
    out: str | Path,
    encoder: TextEncoder,
    on_step: StepCallback | None = None,
    evaluator: Evaluator | None = None,
    known_tasks=None,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) offline DIVL + QAM from the SFT checkpoint ``init``.

    Args:
        cfg: the run.
        data_dir: episode store.
        init: SFT policy checkpoint (the reference and the starting policy).
        out: run directory; an unfinished run with the same config resumes from its latest
            checkpoint.
        encoder: instruction embedder.
        on_step: ``(step, total, metrics)`` after each update.
        evaluator: called every ``cfg.eval_every`` updates with the acting policy's directory.
        stop_after: stop (after checkpointing) once this many updates are done; for tests that
            interrupt a run.

    Returns:
        summary dict (steps, resumed_from, seconds, updates_per_s, final metrics, evals).
    """
    from torch.utils.tensorboard import SummaryWriter

    out, data_dir = Path(out), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_FILE
    refuse_other_config(config_path, cfg, "an offline run")
    sft = load_policy(init)
    replay = build_offline_replay(cfg, data_dir, encoder, sft.cfg.chunk, known_tasks)
    agent = Agent(cfg.agent, sft, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = 0
    latest = latest_checkpoint(out)
    if latest is not None:
        start = load_agent(latest, agent, rng).step
    config_path.write_text(json.dumps(to_dict(cfg), indent=2))
    extra = dict(
        trainer="offline",
        init=str(Path(init).resolve()),
        data=str(data_dir.resolve()),
        replay=replay.summary(),
    )
    writer = SummaryWriter(str(out / "tb"), purge_step=start if start else None)
    evals: list[dict] = []
    metrics: dict = {}
    t0 = time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    try:
        for step in range(start, end):
            metrics = agent.update(replay.sample(cfg.batch_size, rng))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                for k, v in metrics.items():
                    writer.add_scalar(k, v, done)
            checkpointed = done % cfg.checkpoint_every == 0 or done == end
            if checkpointed:  # also refreshes OUT/policy
                commit_checkpoint(out, done, agent, rng, extra, cfg.keep_checkpoints)
            if (
                evaluator is not None
                and cfg.eval_every
                and (done % cfg.eval_every == 0 or done == cfg.steps)
            ):
                if not checkpointed:
                    agent.save_acting_policy(out / "policy", extra=extra | {"step": done})
                result = evaluator(out / "policy", done)
                evals.append({"step": done, **result})
                for k, v in result.items():
                    writer.add_scalar(k, v, done)
            if on_step is not None:
                on_step(done, cfg.steps, metrics)
    finally:
        writer.close()
    elapsed = time.perf_counter() - t0
    return dict(
        steps=end,
        resumed_from=start,
        seconds=elapsed,
        updates_per_s=(end - start) / max(elapsed, 1e-9),
        replay=replay.summary(),
        final=metrics,
        evals=evals,
    )


def read_offline_config(out: str | Path) -> OfflineConfig:
    """The config a run directory was trained with."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {out} is not an offline RL run directory")
    return from_dict(OfflineConfig, json.loads(path.read_text()))
