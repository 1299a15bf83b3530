"""Every command answers bad input with a clear error and exit status 2."""

import pytest

from lwd.cli import main


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["eval", "--policy", "/no/such/ckpt", "--episodes", "1"], "not a policy checkpoint"),
        (["eval", "--policy", "operator", "--suite", "fleet9"], "did you mean 'fleet8'"),
        (["eval", "--policy", "operator", "--episodes", "0"], "at least 1"),
        (["train", "sft", "--data", "/no/such/data", "--out", "/tmp/x"], "not an episode store"),
        (
            ["train", "sft", "--data", "/tmp", "--out", "/tmp/x", "--preset", "sft-defualt"],
            "did you mean sft-default",
        ),
        (["data", "generate", "--out", "/tmp/x", "--episodes", "0"], "at least 1"),
        (["data", "generate", "--out", "/tmp/x", "--suite", "fleet"], "did you mean 'fleet8'"),
        (["data", "info", "/no/such/store"], "not an episode store"),
        (["demo", "--set", "policy_widht=256"], "did you mean policy_width"),
        (
            ["train", "offline", "--data", "/d", "--init", "/i", "--out", "/o", "--set", "lamb=1"],
            "did you mean lam",
        ),
        (
            ["train", "offline", "--data", "/d", "--init", "/i", "--out", "/o", "--set", "lam=0"],
            "lam must be > 0",
        ),
    ],
)
def test_bad_input_is_a_clear_error(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_sft_without_demonstrations_is_a_clear_error(tmp_path, capsys, make_episode):
    from lwd.data.store import EpisodeStore
    from lwd.types import Source

    store = EpisodeStore(tmp_path / "data")
    store.put(make_episode(source=Source.PLAY, success=False))
    assert (
        main(
            [
                "train",
                "sft",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "ckpt"),
                "--steps",
                "2",
            ]
        )
        == 2
    )
    assert "no episodes to train on" in capsys.readouterr().err
    assert len(store) == 1  # nothing already stored is affected


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2


def test_a_demo_setting_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--set", "policy_width"])
    assert exit_.value.code == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err
