import numpy as np
import pytest

from lwd.sim import layout
from lwd.sim.tasks import FLEET8, get_suite, get_task


def test_fleet8_shape_of_suite():
    assert len(FLEET8) == 8
    short = [t for t in FLEET8 if not t.long]
    long = [t for t in FLEET8 if t.long]
    assert len(short) == 4 and len(long) == 4
    assert all(len(t.subtasks) >= 3 for t in long)
    assert all(len(t.subtasks) == 1 for t in short)
    instructions = [i for t in FLEET8 for i in t.instructions]
    assert len(set(instructions)) == len(instructions)
    assert all(len(t.paraphrases) >= 2 for t in FLEET8)


def test_unknown_names_suggest():
    with pytest.raises(KeyError, match="did you mean 'open-drawer'"):
        get_task("open-drawr")
    with pytest.raises(KeyError, match="fleet8"):
        get_suite("fleet9")


def test_pack_state_known_answer():
    raw = np.arange(40, dtype=np.float64)
    out = layout.pack_state("scene", raw)
    assert out.shape == (layout.STATE_DIM,) and out.dtype == np.float32
    assert out[layout.PROPRIO].tolist() == list(range(19))
    assert out[layout.SCENE].tolist() == list(range(19, 40))
    assert not out[layout.PUZZLE].any()
    assert out[layout.ENV_FLAG].tolist() == [1.0, 0.0]
    out = layout.pack_state("puzzle-3x3", np.arange(55))
    assert out[layout.PUZZLE].tolist() == list(range(19, 55))
    assert not out[layout.SCENE].any()
    assert out[layout.ENV_FLAG].tolist() == [0.0, 1.0]


def test_pack_state_rejects_bad_input():
    with pytest.raises(ValueError, match="expected 40"):
        layout.pack_state("scene", np.zeros(55))
    with pytest.raises(ValueError, match="unknown environment kind"):
        layout.pack_state("cube", np.zeros(40))
