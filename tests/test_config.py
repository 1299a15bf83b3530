"""Command-line settings of a config: FIELD=VALUE parsing and typed replacement."""

import pytest

from lwd.config import DemoConfig, parse_setting, with_settings


def test_values_are_read_as_json_when_they_are_json():
    assert parse_setting("policy_width=256") == ("policy_width", 256)
    assert parse_setting("cut_at_source_change=true") == ("cut_at_source_change", True)
    assert parse_setting('tasks=["press-center"]') == ("tasks", ["press-center"])
    assert parse_setting("extraction=none") == ("extraction", "none")
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        parse_setting("policy_width")


def test_with_settings_replaces_fields_and_keeps_tuples_tuples():
    cfg = with_settings(DemoConfig(), [("policy_width", 256), ("tasks", ["press-center"])])
    assert cfg.policy_width == 256 and cfg.tasks == ("press-center",)
    assert cfg.robots == DemoConfig().robots
    with pytest.raises(ValueError, match="did you mean robots"):
        with_settings(DemoConfig(), [("robot", 3)])
