"""Best-of-N acting: sample N chunks from the flow policy, act with the one a critic ranks first.

QAM's reference code acts this way when ``best_of_n > 1``; lwd makes it a [choice]
(``AgentConfig.best_of_n``, default 1 = off). The critic travels with the policy, inside the
same checkpoint directory, as two optional files beside ``save_policy``'s::

    ckpt/
      ranker.safetensors   Critic.state_dict() (the learner's target critic)
      ranker.json          {"format": 1, "kind": "best_of_n", "n": 16, "reduce": "mean",
                            "pessimism": 0.5, "critic": {"width": 256, "depth": 4, "heads": 2}}

``reduce`` is the heads rule the samples are ranked by (``AgentConfig.rank_heads``;
``lwd.nets.critic.combine_heads``); files without it rank by the mean.

A checkpoint without them acts exactly as before. Learners keep loading the flow alone with
:func:`~lwd.policy.checkpoint.load_policy`; whatever acts (robots, evaluation, data generation)
uses :func:`load_acting_policy`, which returns a :class:`BestOfN` when the ranker is there::

    policy = load_acting_policy(ckpt)            # FlowPolicy or BestOfN, same sample() API
    chunk = policy.sample(state, lang)           # (B, H, A)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lwd.config import PolicyConfig
from lwd.nets.critic import HEAD_RULES, Critic, build_critic, combine_heads
from lwd.policy.checkpoint import (
    FORMAT,
    CheckpointError,
    _read_json,
    _write_json,
    load_module_weights,
    load_policy,
    read_checkpoint_config,
    save_module_weights,
)
from lwd.policy.flow import FlowPolicy, FlowPolicyRunner, _as_tensor

RANKER_FILE = "ranker.safetensors"
RANKER_CONFIG = "ranker.json"
RANKER_FILES = (RANKER_CONFIG, RANKER_FILE)
"""The optional files of a policy checkpoint that acts best-of-N."""
_KIND = "best_of_n"


def _check_reduce(reduce: str) -> None:
    if reduce not in HEAD_RULES:
        raise ValueError(f"best-of-N ranks by one of {HEAD_RULES}, got {reduce!r}")


class BestOfN(nn.Module):
    """A flow policy that acts with the best of ``n`` samples under ``critic``, its heads
    combined by ``reduce`` (:func:`~lwd.nets.critic.combine_heads`).

    It has the :class:`FlowPolicy` acting interface (``cfg``, ``normalizer``, ``device``,
    ``sample``), so ``FlowPolicyRunner`` and the robots use it unchanged.
    """

    def __init__(
        self,
        policy: FlowPolicy,
        critic: Critic,
        n: int,
        reduce: str = "mean",
        pessimism: float = 0.5,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"best-of-N needs n >= 1 samples, got {n}")
        _check_reduce(reduce)
        self.policy, self.critic, self.n = policy, critic, int(n)
        self.reduce, self.pessimism = reduce, float(pessimism)

    @property
    def cfg(self) -> PolicyConfig:
        return self.policy.cfg

    @property
    def normalizer(self):
        return self.policy.normalizer

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @torch.no_grad()
    def sample(self, state, lang, image=None, noise=None, generator=None, *, steps=None):
        """As :meth:`FlowPolicy.sample`; ``noise``, if given, is ``(B, n, H, A)`` or ``(B*n, ...)``.

        Returns:
            ``(B, H, A)``: per row, the sample with the highest Q (heads combined by ``reduce``).
        """
        n, device = self.n, self.device
        state_t = _as_tensor(state, device, torch.float32)
        lang_t = _as_tensor(lang, device, torch.float32)
        image_t = None if image is None else _as_tensor(image, device, None)
        b = state_t.shape[0]

        def rep(x):  # each row n times, candidates of one row next to each other
            return None if x is None else x.repeat_interleave(n, dim=0)

        if noise is not None:
            noise = _as_tensor(noise, device, torch.float32).reshape(b * n, -1)
        actions = self.policy.sample(
            rep(state_t), rep(lang_t), rep(image_t), noise, generator, steps=steps
        )  # (B*n, H, A)
        if n == 1:
            return actions
        was_training = self.critic.training
        self.critic.eval()
        try:
            state_n = self.normalizer.normalize_state(rep(state_t))
            qs = self.critic(state_n, rep(lang_t), actions, rep(image_t))  # (E, B*n)
            q = combine_heads(qs, self.reduce, self.pessimism)
        finally:
            self.critic.train(was_training)
        best = q.view(b, n).argmax(dim=1)
        return actions.view(b, n, *actions.shape[1:])[torch.arange(b, device=device), best]


def save_ranker(
    directory: str | Path, critic: Critic, n: int, *, reduce: str = "mean", pessimism: float = 0.5
) -> None:
    """Add ``critic`` as the best-of-``n`` ranker (heads combined by ``reduce``) of the policy
    checkpoint in ``directory``."""
    _check_reduce(reduce)
    directory = Path(directory)
    mlp = critic.heads
    depth = len(mlp.hidden)
    heads = mlp.out.weight.shape[0]
    save_module_weights(directory / RANKER_FILE, critic)
    spec = {"width": int(mlp.width), "depth": depth, "heads": int(heads)}
    config = {
        "format": FORMAT,
        "kind": _KIND,
        "n": int(n),
        "reduce": reduce,
        "pessimism": float(pessimism),
        "critic": spec,
    }
    _write_json(directory / RANKER_CONFIG, config)


def remove_ranker(directory: str | Path) -> None:
    """Drop the ranker files (if any): the checkpoint then acts with one sample."""
    for name in RANKER_FILES:
        (Path(directory) / name).unlink(missing_ok=True)


def has_ranker(directory: str | Path) -> bool:
    """Whether the checkpoint in ``directory`` carries a best-of-N ranker."""
    return (Path(directory) / RANKER_CONFIG).is_file()


def require_ranker(directory: str | Path, best_of_n: int | None) -> None:
    """Raise :class:`CheckpointError` if ``best_of_n > 1`` is asked of a checkpoint without a
    ranker (``None`` or 1: nothing to check)."""
    if best_of_n is not None and best_of_n > 1 and not has_ranker(directory):
        raise CheckpointError(
            f"{directory}: best-of-{best_of_n} needs a critic, and this checkpoint has no "
            f"{RANKER_CONFIG}; train with best_of_n > 1 (lwd train offline --best-of-n N), or "
            f"act with one sample"
        )


def load_acting_policy(
    directory: str | Path, *, device: str | torch.device = "cpu", best_of_n: int | None = None
) -> FlowPolicy | BestOfN:
    """The policy a checkpoint acts with: its flow, ranked best-of-N if it carries a critic.

    Args:
        directory: a checkpoint written by ``save_policy`` (and maybe :func:`save_ranker`).
        device: where to load it.
        best_of_n: override the checkpoint's ``n`` (1: act with one sample, as the plain flow).

    Raises:
        CheckpointError: the flow or the ranker files are missing, unreadable or mismatched;
            or ``best_of_n > 1`` for a checkpoint without a ranker.
    """
    directory = Path(directory)
    policy = load_policy(directory, device=device)
    require_ranker(directory, best_of_n)
    if not has_ranker(directory):
        return policy
    path = directory / RANKER_CONFIG
    data = _read_json(path)
    if data.get("format") != FORMAT or data.get("kind") != _KIND:
        raise CheckpointError(
            f"{path}: expected format {FORMAT} and kind {_KIND!r}, got "
            f"{data.get('format')!r} and {data.get('kind')!r}"
        )
    try:
        spec = data["critic"]
        n = int(data["n"] if best_of_n is None else best_of_n)
        reduce, pessimism = data.get("reduce", "mean"), float(data.get("pessimism", 0.5))
        critic = build_critic(
            policy.cfg, int(spec["width"]), int(spec["depth"]), int(spec["heads"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid ranker config ({exc!r})") from exc
    if n < 1:
        raise CheckpointError(f"{path}: best-of-N needs n >= 1, got {n}")
    if reduce not in HEAD_RULES:
        raise CheckpointError(f"{path}: reduce must be one of {HEAD_RULES}, got {reduce!r}")
    if n == 1:
        return policy
    load_module_weights(directory / RANKER_FILE, critic)
    return BestOfN(policy, critic.to(device).eval(), n, reduce, pessimism)


def load_runner(
    directory: str | Path, encoder=None, seed: int = 0, *, best_of_n: int | None = None
) -> FlowPolicyRunner:
    """The checkpoint as a fleet ``Policy`` (:func:`load_acting_policy`), carrying the version
    recorded in it (default 1)."""
    version = int(read_checkpoint_config(directory).get("extra", {}).get("version", 1))
    policy = load_acting_policy(directory, best_of_n=best_of_n)
    return FlowPolicyRunner(policy, encoder, version=version, seed=seed)
