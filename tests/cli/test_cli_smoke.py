"""data -> SFT (a few steps) -> eval (one episode per task), through the command line."""

import json

import pytest

from lwd.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")


def _sft(data, ckpt, steps="4"):
    return ["--threads", "1", "train", "sft", "--data", str(data), "--out", str(ckpt),
            "--steps", steps, "--batch-size", "16", "--width", "32"]  # fmt: skip


def test_data_sft_eval_through_the_cli(workdir, capsys):
    data, ckpt, report = workdir / "data", workdir / "sft", workdir / "eval.json"
    assert main(["data", "generate", "--out", str(data), "--episodes", "2"]) == 0
    assert main(["data", "info", str(data)]) == 0
    assert main(_sft(data, ckpt)) == 0
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "normalizer.json").is_file()
    assert main(["eval", "--policy", str(ckpt), "--episodes", "1", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "average" in out and "put-in-drawer" in out
    result = json.loads(report.read_text())
    assert len(result["tasks"]) == 8 and len(result["episodes"]) == 8
    assert 0.0 <= result["avg_success"] <= 1.0
    assert report.with_suffix(".png").stat().st_size > 1000

    # Resuming a finished run with the same settings trains nothing more and succeeds.
    assert main(_sft(data, ckpt)) == 0
    # Resuming with different settings is refused, loudly, and the checkpoint is kept.
    assert main(_sft(data, ckpt, steps="8")) == 2
    assert "different config" in capsys.readouterr().err
    assert (ckpt / "model.safetensors").is_file()


def test_policy_rollouts_join_the_store_as_the_policys_autonomous_episodes(workdir):
    """`data generate --policy` records unassisted deployments of a checkpoint."""
    from lwd.data.store import EpisodeStore
    from lwd.types import Source

    data, ckpt = workdir / "data", workdir / "sft"  # made by the test above
    if not (ckpt / "config.json").is_file():
        pytest.skip("needs test_data_sft_eval_through_the_cli's checkpoint")
    before = set(EpisodeStore(data).episode_ids())
    args = ["data", "generate", "--out", str(data), "--episodes", "2", "--seed", "7",
            "--tasks", "press-center", "open-drawer", "--policy", str(ckpt)]  # fmt: skip
    assert main(args) == 0
    store = EpisodeStore(data)
    new = [store.get(i) for i in set(store.episode_ids()) - before]
    assert sorted(ep.task for ep in new) == ["open-drawer"] * 2 + ["press-center"] * 2
    for ep in new:
        assert (ep.sources == Source.AUTONOMOUS).all()
        assert (ep.policy_versions == 1).all()  # the SFT checkpoint records no version: 1
        assert ep.rewards.sum() == float(ep.success)
    assert main(["data", "generate", "--out", str(data), "--policy", str(workdir)]) == 2


def test_offline_rl_through_the_cli_with_an_agent_setting(workdir):
    """`train offline --set FIELD=VALUE` reaches the agent, and the run's config records it."""
    data, ckpt, out = workdir / "data", workdir / "sft", workdir / "offline"
    if not (ckpt / "config.json").is_file():
        pytest.skip("needs test_data_sft_eval_through_the_cli's checkpoint")
    args = ["--threads", "1", "train", "offline", "--data", str(data), "--init", str(ckpt),
            "--out", str(out), "--steps", "2", "--batch-size", "8", "--critic-width", "16",
            "--set", "critic_heads=3", "--set", "q_grad_heads=min"]  # fmt: skip
    assert main(args) == 0
    agent = json.loads((out / "offline_config.json").read_text())["agent"]
    assert (agent["critic_heads"], agent["q_grad_heads"], agent["critic_width"]) == (3, "min", 16)
