"""Frozen dataclass configs, composed, with a registry of named presets.

Every field has a one-line docstring (the string under it). The resolved config is saved with
every run and checkpoint as JSON (:func:`to_dict` / :func:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lwd.sim.layout import ACTION_DIM, STATE_DIM

T = TypeVar("T")


@dataclass(frozen=True)
class PolicyConfig:
    """The flow-matching policy's architecture."""

    state_dim: int = STATE_DIM
    """Width of the packed state vector (see lwd.sim.layout)."""
    action_dim: int = ACTION_DIM
    """Action dimension (5 for the UR5e)."""
    chunk: int = 5
    """H: actions per chunk; all are executed, then the policy replans."""
    flow_steps: int = 10
    """K: Euler steps when sampling a chunk from noise."""
    width: int = 512
    """Hidden width of the velocity-field MLP."""
    depth: int = 4
    """Number of hidden layers of the velocity-field MLP."""
    lang_dim: int = 384
    """Size of the instruction embedding (all-MiniLM-L6-v2: 384)."""
    lang_proj: int = 64
    """The instruction embedding is projected to this many features."""
    time_dim: int = 32
    """Sinusoidal features of the flow time w."""
    use_images: bool = False
    """Condition on a camera image through a small CNN trained from scratch."""
    image_size: int = 64
    """Square camera frames of this many pixels."""
    image_features: int = 64
    """Output features of the image encoder."""
    layer_norm: bool = True
    """LayerNorm after each hidden layer."""
    indicator: bool = False
    """Condition on an advantage indicator (RECAP): a learned, zero-initialised embedding of
    unknown/bad/good added to the context. Off for plain flow policies."""
    act_indicator: str = "good"
    """With `indicator`: the label the policy acts with ("good" for RECAP)."""
    guidance: float = 1.0
    """With `indicator`: classifier-free guidance weight beta when acting,
    v = v_unknown + beta * (v_act - v_unknown); 1 = plain conditioning."""


@dataclass(frozen=True)
class SFTConfig:
    """Flow-matching behaviour cloning (the imitation-learned start)."""

    steps: int = 3000
    """Gradient updates."""
    batch_size: int = 256
    """Samples per update."""
    lr: float = 3e-4
    """Adam learning rate (cosine-decayed to 10% over `steps`)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_demos_per_task: int = 0
    """Use at most this many demonstration episodes per task (0 = all)."""
    sources: tuple[str, ...] = ("demo",)
    """Which step sources SFT learns from."""
    seed: int = 0
    """Seed for sampling and initialisation."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many updates."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Architecture of the policy being trained."""


@dataclass(frozen=True)
class EvalConfig:
    """A fixed evaluation protocol: same seeds, episodes and perturbations every time."""

    suite: str = "fleet8"
    """Task suite to evaluate on."""
    tasks: tuple[str, ...] = ()
    """Evaluate only these tasks of the suite (empty: all); seeds stay those of the full run."""
    episodes_per_task: int = 20
    """Evaluation episodes per task."""
    seed: int = 1000
    """Base seed; episode i of task j uses a seed derived from (seed, j, i)."""
    perturb: bool = True
    """Apply per-robot deployment perturbations (noise, delay, shifts)."""
    num_robots: int = 8
    """Episodes are spread over this many simulated robots, each with its own perturbation."""
    workers: int = 2
    """Parallel worker processes."""
    best_of_n: int | None = None
    """Act with this many samples ranked by the checkpoint's critic (1: one sample, the flow
    alone); None: as the checkpoint says (``lwd.policy.ranker``)."""


@dataclass(frozen=True)
class AgentConfig:
    """The RL learner's update: DIVL value + clipped double-Q critic + QAM policy extraction.

    Defaults follow ALGORITHMS.md (the LWD paper where it reports a value, QAM's reference
    otherwise); the ablations and baselines are one field each (``value``, ``adaptive_tau``,
    ``extraction``).
    """

    value: str = "divl"
    """Value learner: "divl" (categorical, quantile read-out) or "expectile" (IQL ablation)."""
    num_atoms: int = 201
    """DIVL: atoms of the categorical value distribution."""
    v_min: float = -0.1
    """DIVL: lowest atom (values live in [0, 1] with the sparse success reward)."""
    v_max: float = 1.1
    """DIVL: highest atom."""
    adaptive_tau: bool = True
    """DIVL: tau = clip(tau_base - tau_alpha * normalised entropy); False = constant tau_base."""
    tau_base: float = 0.6
    """DIVL: base quantile (paper: 0.6 offline, 0.9 online)."""
    tau_alpha: float = 0.3
    """DIVL: how much the normalised entropy of V(s') lowers tau (paper: 0.3)."""
    tau_min: float = 0.3
    """DIVL: lower clip of tau [choice: not reported in the paper]."""
    tau_max: float = 0.95
    """DIVL: upper clip of tau [choice: not reported in the paper]."""
    expectile: float = 0.7
    """Expectile ablation: IQL's expectile of the in-sample value."""
    critic_heads: int = 2
    """Critic heads (an ensemble evaluated in one batched pass)."""
    critic_target: str = "min"
    """How the target critic's heads make the value label on dataset actions: "min" (clipped
    double-Q, LWD), "mean", or "pessimistic" (mean - pessimism * std, QAM's ensemble rule)."""
    pessimism: float = 0.5
    """The std coefficient of the "pessimistic" head rule (QAM: 0.5 over 10 heads)."""
    critic_width: int = 512
    """Hidden width of the critic and value MLPs."""
    critic_depth: int = 4
    """Hidden layers of the critic and value MLPs (with LayerNorm, as in QAM)."""
    ema: float = 0.005
    """Polyak rate of the target critic."""
    value_lr: float = 5e-4
    """Adam learning rate of the value net (paper: 5e-4)."""
    critic_lr: float = 5e-4
    """Adam learning rate of the critic (paper: 5e-4)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the fine-tuned flow (QAM's small-model default)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip, applied per optimizer."""
    extraction: str = "qam"
    """Policy extraction: "qam", "fql" (one-step policy), "awr" (advantage-weighted flow BC),
    or "none" (train value and critic only)."""
    lam: float = 2.0
    """QAM temperature lambda of pi* ~ pi_ref exp(Q / lambda) (paper: 2; QAM's inv_temp = 1/lambda)."""
    q_grad_heads: str = "mean"
    """Heads rule for the Q whose action gradient drives extraction (QAM's terminal adjoint,
    FQL's Q term): "mean", "min" or "pessimistic" (see ``critic_target``)."""
    reference: str = "frozen"
    """QAM's reference flow f_ref: "frozen" (the SFT checkpoint forever, LWD's choice) or "bc"
    (as QAM's reference code: a copy of the SFT flow keeps training by flow-matching BC on every
    batch and f_ref is its EMA at rate ``ema``; online it follows the fleet's data, which a
    frozen reference cannot reach)."""
    reference_lr: float = 3e-4
    """Adam learning rate of the "bc" reference (QAM: the actor's)."""
    rollout_field: str = "finetuned"
    """QAM memoryless-SDE rollout with the "finetuned" flow (QAM, Adjoint Matching) or the
    frozen "reference" (LWD's Algorithm 2)."""
    fql_alpha: float = 10.0
    """FQL: weight of the distillation of the reference flow into the one-step policy."""
    awr_beta: float = 10.0
    """AWR: inverse temperature of the advantage weights exp(beta * A)."""
    awr_max_weight: float = 100.0
    """AWR: weights are clipped to this."""
    actor_every: int = 1
    """Update the policy every this many critic updates (1 = every update, the paper's)."""
    actor_warmup: int = 0
    """Policy extraction starts after this many updates, so that it follows a critic that has
    seen some data [choice; 0 = from the first update, as in the paper]."""
    best_of_n: int = 1
    """Act with the best of this many flow samples under the target critic (``rank_heads``),
    shipped inside the published policy [choice: QAM's reference ``best_of_n``; 1 = off, as
    in the LWD paper]. Extraction can only tilt the flow along the critic's action gradient,
    which it may overrate; ranking the flow's own samples only uses the critic's ordering."""
    rank_heads: str = "mean"
    """Heads rule by which best-of-N ranks the samples: "mean", "min" or "pessimistic" (see
    ``critic_target``; QAM's reference ranks by the mean of heads). Written into the policy's
    ranker, so robots and evaluation rank as the learner chose."""
    precision: str = "fp32"
    """Matmul precision of the update: "fp32"; "bf16" (autocast: hidden-layer matmuls in
    bfloat16; output layers, losses, weights, gradients and optimizer state stay fp32); or
    "bf16_actor" (only policy extraction, most of the update's time, in bf16). bf16 is faster
    where the hardware has bf16 matmul units (CPUs with AMX, GPUs) and slower elsewhere; acting
    and evaluation are always fp32. Measured: 1.6x faster at width 512 on a 2-core AMX CPU, but
    lower scores on the fleet8 offline table (README, performance note): not for results."""


@dataclass(frozen=True)
class OfflineConfig:
    """An offline RL run (ALGORITHMS.md §4, stage 2)."""

    steps: int = 20_000
    """Learner updates."""
    batch_size: int = 256
    """Transitions per update."""
    n_step: int = 10
    """Chunks per TD backup (paper: 10 offline on long tasks)."""
    gamma: float = 0.9999
    """Discount per control step (the chunk discount is gamma^H)."""
    sources: tuple[str, ...] = ("demo", "autonomous", "intervention", "play")
    """Episodes whose steps all come from these sources form the offline buffer."""
    seed: int = 0
    """Seeds sampling, initialisation and the update's noise."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many updates (and at the end)."""
    keep_checkpoints: int = 2
    """Older checkpoint directories are deleted beyond this many."""
    log_every: int = 50
    """TensorBoard scalars every this many updates."""
    eval_every: int = 0
    """Evaluate the acting policy every this many updates (0: never; needs an evaluator)."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """The update itself."""


@dataclass(frozen=True)
class OnlineConfig:
    """The online learner while the fleet deploys (ALGORITHMS.md §4, stage 3)."""

    batch_size: int = 256
    """Transitions per update."""
    online_fraction: float = 0.5
    """Share of every batch drawn from fleet (online) data: 1:1 offline:online."""
    n_step: int = 1
    """Chunks per TD backup, for both buffers online (online windows mix policy and human)."""
    gamma: float = 0.9999
    """Discount per control step."""
    publish_every: int = 50
    """Publish the acting policy every this many updates."""
    refresh_every: int = 50
    """Commit a snapshot and add its new episodes every this many updates."""
    refresh_s: float | None = None
    """Also refresh once this many seconds have passed since the last refresh (None: by update
    count only). A learner slowed by a busy machine (the demo's 64 robots) would otherwise leave
    finished episodes waiting ``refresh_every`` updates."""
    takeover_as_failure: bool = False
    """End an autonomous step's TD return at the operator's next takeover, with no bootstrap
    (as if the attempt had failed there) [choice; the paper gives interventions no special
    reward]. A scripted operator rescues nearly every episode, so success labels alone cannot
    tell the policy's stalled actions from the rescue's."""
    cut_at_source_change: bool = False
    """Stop every n-chunk window before the first step of another source (a takeover or a
    hand-back) and bootstrap there, so that ``n > 1`` never mixes policy and human actions in
    one return [choice; the paper uses n = 1 online for that reason]."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many updates."""
    keep_checkpoints: int = 2
    """Older checkpoint directories are deleted beyond this many."""
    max_updates: int = 0
    """Stop after this many updates (0: run until stopped)."""
    seed: int = 0
    """Seeds sampling and the update's noise."""
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(tau_base=0.9))
    """The update; tau_base 0.9 online (paper)."""


@dataclass(frozen=True)
class RecapConfig:
    """RECAP (π*0.6 style) baseline: MC value -> advantage indicator -> conditioned flow BC.

    Every round trains the value, relabels every step good/bad, then trains the policy with
    flow BC conditioned on the label (ALGORITHMS.md §5). Defaults follow π*0.6 where it reports
    a value; [choice] marks the others.
    """

    updates_per_round: int = 500
    """Policy updates (conditioned flow BC) per round, continuing from the current weights."""
    value_updates_per_round: int = 500
    """Value updates on Monte-Carlo returns per round, before the relabelling [choice]."""
    batch_size: int = 256
    """Samples per update (value and policy), uniform over all offline + fleet steps."""
    gamma: float = 0.9999
    """Discount per control step of the Monte-Carlo returns and the n-step advantage."""
    num_atoms: int = 201
    """Atoms of the distributional value (π*0.6: 201 bins), DIVL's support."""
    v_min: float = -0.1
    """Lowest atom (returns of the sparse {0, 1} reward lie in [0, 1])."""
    v_max: float = 1.1
    """Highest atom."""
    value_width: int = 512
    """Hidden width of the value MLP."""
    value_depth: int = 4
    """Hidden layers of the value MLP (with LayerNorm)."""
    value_lr: float = 5e-4
    """Adam learning rate of the value net (as DIVL's)."""
    policy_lr: float = 3e-4
    """Adam learning rate of the conditioned flow (the small-model default of SFT and QAM)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip, per optimizer."""
    advantage: str = "n_step"
    """"n_step": A = r + gamma^(nH) V(s_{t+nH}) - V(s_t) (π*0.6's N-step estimate);
    "monte_carlo": A = G_t - V(s_t)."""
    advantage_chunks: int = 10
    """n of the n-step advantage, in chunks (10 chunks of H=5 = 50 steps, π*0.6's N=50)."""
    good_fraction: float = 0.3
    """Per task, eps = the (1 - good_fraction) quantile of the advantages of the steps not
    forced good, so about this share of them is labelled good (π*0.6: about 30%)."""
    interventions_good: bool = True
    """Label every intervention step good, whatever its advantage (π*0.6 does so for
    corrections)."""
    cfg_dropout: float = 0.3
    """Chance that a training label is dropped to "unknown" (classifier-free guidance)."""
    guidance: float = 1.0
    """CFG weight beta when acting on "good": v = v_unknown + beta (v_good - v_unknown);
    1 = plain conditioning. Saved in the policy's config, so every loader acts with it."""
    seed: int = 0
    """Seeds the value net's initialisation, sampling and the update's noise."""


DEMO_TASKS = ("open-drawer", "close-window", "move-cube", "press-center")


@dataclass(frozen=True)
class DemoConfig:
    """``lwd demo``: the whole loop on one machine (server, simulated fleet, online learner)."""

    robots: int = 4
    """Simulated robots (each its own process, or hosted ``robots_per_process`` to a process)."""
    robots_per_process: int = 1
    """Robots hosted by one robot process (the light mode packs many robots per process)."""
    active_per_process: int | None = None
    """At most this many robots of a process in an episode at once (each holds a ~300 MB
    MuJoCo environment meanwhile; the others wait between episodes). None: all."""
    minutes: float = 15.0
    """How long the fleet runs (wall clock)."""
    tasks: tuple[str, ...] = DEMO_TASKS
    """The tasks the fleet works on (fleet8's short tasks by default)."""
    episodes_per_task: int = 24
    """Offline data to generate per task when building the start (about half demonstrations)."""
    sft_steps: int = 3000
    """SFT updates when building the start."""
    policy_width: int = 256
    """Width of the policy's velocity field (256: beside four robots the learner made 2.2
    updates/s against 1.1 at 512, before the update was made faster; 2.7/s now)."""
    critic_width: int = 256
    """Width of value and critic (they start from scratch online)."""
    lam: float = 0.1
    """QAM temperature; Q lives in [0, 1] here, so a small lambda gives the tilt some weight."""
    actor_warmup: int = 300
    """Online critic-only updates before the policy moves, when the learner starts from the
    SFT (``offline_steps = 0``: the critic starts from scratch)."""
    deploy_episodes: int = 24
    """The SFT's own unassisted rollouts per task, added to the offline data before the offline
    stage: its deployment record, the failures a critic must see to rank the SFT's actions
    (0: none)."""
    offline_steps: int = 1500
    """Offline DIVL critic updates on that data before the fleet starts (the flow stays the
    SFT's; 0: no offline stage, the learner starts from the SFT)."""
    best_of_n: int = 16
    """The fleet acts with the best of N flow samples under the critic (1: one sample); needs
    the offline stage, as a critic from scratch ranks nothing."""
    online_n_step: int = 1
    """Chunks per TD backup in the online learner (the paper: 1)."""
    cut_at_source_change: bool = False
    """Online returns stop before a step of another source and bootstrap there
    (``OnlineConfig.cut_at_source_change``)."""
    eval_episodes: int = 30
    """Fixed-protocol episodes per task for the SFT, start and final policies (0: skip); the
    SFT's and the start's are cached with the start, so a run evaluates only its final."""
    robot_nice: int = 0
    """Niceness of the robot processes and of their scheduling groups (``lower_priority``).
    0 (equal shares) by default: the learner then gets about a third of a core (2.7 updates/s
    at width 256 beside four robots). At 15 it kept a whole core (6.6 updates/s, 5,900
    updates) but the robots gathered half the robot-hours, and in that one run the final
    policy scored +0.03 ± 0.05 over the SFT, against +0.06 to +0.11 in three runs with equal
    shares (there a niceness of 15 did not reach the scheduling groups, so it acted as 0)."""
    seed: int = 0
    """Seeds data generation, SFT and the learner."""


_PRESETS: dict[str, Any] = {
    "sft-default": SFTConfig(),
    "sft-quick": SFTConfig(steps=200, batch_size=128, checkpoint_every=100),
    "policy-small": PolicyConfig(width=256, depth=3),
    "eval-default": EvalConfig(),
    "eval-quick": EvalConfig(episodes_per_task=2),
    "agent-default": AgentConfig(),
    "agent-expectile": AgentConfig(value="expectile"),
    "agent-constant-tau": AgentConfig(adaptive_tau=False),
    "agent-fql": AgentConfig(extraction="fql"),
    "agent-awr": AgentConfig(extraction="awr"),
    # QAM's reference critic: 10 heads, mean - 0.5 std for targets and for the action gradient.
    "agent-qam-ensemble": AgentConfig(
        critic_heads=10, critic_target="pessimistic", q_grad_heads="pessimistic"
    ),
    "agent-online": AgentConfig(tau_base=0.9),
    "offline-default": OfflineConfig(),
    "online-default": OnlineConfig(refresh_s=5.0),
    "recap-default": RecapConfig(),
    "demo-default": DemoConfig(),
    "demo-light": DemoConfig(robots=64, robots_per_process=32, active_per_process=12),
    "demo-quick": DemoConfig(
        minutes=2.0,
        robots=2,
        episodes_per_task=6,
        sft_steps=300,
        deploy_episodes=2,
        offline_steps=100,
        eval_episodes=2,
    ),
    "offline-quick": OfflineConfig(steps=100, batch_size=64, checkpoint_every=50, n_step=3),
}


def preset(name: str) -> Any:
    """Return the named preset config, suggesting close names on a typo."""
    if name in _PRESETS:
        return _PRESETS[name]
    close = difflib.get_close_matches(name, list(_PRESETS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"no preset named {name!r}{hint} (known: {', '.join(sorted(_PRESETS))})")


def parse_setting(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` -> (field, value); the value is read as JSON when it is JSON."""
    field, eq, value = text.partition("=")
    if not eq or not field:
        raise ValueError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def with_settings(cfg: T, settings: Iterable[tuple[str, Any]]) -> T:
    """``cfg`` with the given top-level fields replaced, checked as :func:`from_dict` checks a
    saved config (unknown fields are an error; lists become tuples)."""
    return from_dict(type(cfg), to_dict(cfg) | dict(settings))


def to_dict(cfg: Any) -> dict:
    """Plain JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} config must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown {cls.__name__} fields {unknown}{hint} (known: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None:
            value = from_dict(sub, value)
        elif isinstance(value, list) and "tuple" in str(ftype):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED = {
    ("SFTConfig", "policy"): PolicyConfig,
    ("OfflineConfig", "agent"): AgentConfig,
    ("OnlineConfig", "agent"): AgentConfig,
}


def refuse_other_config(path: Path, cfg: Any, what: str) -> None:
    """Raise if ``path`` holds a saved config of a run that differs from ``cfg``.

    Resuming continues a run exactly, so a directory is only resumed with the settings it was
    started with; ``what`` names the run in the message ("an SFT run", "an online run").
    """
    path = Path(path)
    if path.is_file() and from_dict(type(cfg), json.loads(path.read_text())) != cfg:
        raise ValueError(
            f"{path.parent} holds {what} with a different config; pass a new --out, or the "
            "same settings to resume it"
        )
