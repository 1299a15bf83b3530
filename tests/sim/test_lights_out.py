import numpy as np
import pytest

from lwd.sim import lights_out


def test_toggle_matrix_corner_and_centre_3x3():
    m = lights_out.toggle_matrix(3, 3)
    assert sorted(np.flatnonzero(m[:, 0])) == [0, 1, 3]
    assert sorted(np.flatnonzero(m[:, 4])) == [1, 3, 4, 5, 7]


def test_press_centre_gives_plus():
    out = lights_out.press(np.zeros(9), 4, 3, 3)
    assert out.reshape(3, 3).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def test_solve_known_answers():
    zeros = np.zeros(9, dtype=int)
    diagonal = np.eye(3, dtype=int).reshape(-1)
    assert lights_out.solve(zeros, zeros, 3, 3) == []
    assert lights_out.solve(zeros, diagonal, 3, 3) == [0, 4, 8]
    # OGBench puzzle-3x3 task 2: all on -> all on but the top-left corner.
    assert lights_out.solve(np.ones(9), [0, 1, 1, 1, 1, 1, 1, 1, 1], 3, 3) == [0, 2, 5, 6, 7]


@pytest.mark.parametrize("rows,cols", [(3, 3), (4, 4), (4, 5)])
def test_solution_reaches_goal_and_is_minimal(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    for _ in range(20):
        start = rng.integers(0, 2, rows * cols)
        presses = rng.choice(rows * cols, size=3, replace=False)
        goal = start.copy()
        for b in presses:
            goal = lights_out.press(goal, b, rows, cols)
        sol = lights_out.solve(start, goal, rows, cols)
        state = start.copy()
        for b in sol:
            state = lights_out.press(state, b, rows, cols)
        assert state.tolist() == goal.tolist()
        assert len(sol) <= 3


def test_unreachable_goal_on_singular_grid_is_an_error():
    # 4x4 lights-out is singular: a single light on from all-off is unreachable.
    goal = np.zeros(16, dtype=int)
    goal[0] = 1
    with pytest.raises(ValueError, match="unreachable"):
        lights_out.solve(np.zeros(16), goal, 4, 4)


def test_wrong_size_is_an_error():
    with pytest.raises(ValueError, match="needs 9 lights"):
        lights_out.solve(np.zeros(8), np.zeros(9), 3, 3)
