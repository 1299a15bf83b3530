"""Lights-out solver over GF(2), for OGBench's puzzle environments.

Pressing button (r, c) toggles it and its four neighbours. Which buttons to press to turn
``state`` into ``goal`` is a linear system over GF(2): ``M p = state XOR goal`` where column j
of ``M`` is the toggle pattern of button j. Presses commute and pressing twice cancels, so a
solution is a set of buttons. Grids with a singular ``M`` (e.g. 4x4) have several solutions;
we return one with the fewest presses.
"""

from __future__ import annotations

import itertools

import numpy as np


def toggle_matrix(rows: int, cols: int) -> np.ndarray:
    """``(n, n)`` uint8 matrix whose column j is the set of lights button j toggles."""
    n = rows * cols
    m = np.zeros((n, n), dtype=np.uint8)
    for j in range(n):
        r, c = divmod(j, cols)
        for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < rows and 0 <= cc < cols:
                m[rr * cols + cc, j] = 1
    return m


def press(state: np.ndarray, button: int, rows: int, cols: int) -> np.ndarray:
    """The light state after pressing ``button`` (row-major index)."""
    return (np.asarray(state, dtype=np.uint8) + toggle_matrix(rows, cols)[:, button]) % 2


def _solve_gf2(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Solve ``a x = b`` over GF(2): one particular solution and a null-space basis, or None."""
    a = a.copy() % 2
    b = b.copy() % 2
    n_rows, n_cols = a.shape
    pivots: list[int] = []
    row = 0
    for col in range(n_cols):
        hit = next((r for r in range(row, n_rows) if a[r, col]), None)
        if hit is None:
            continue
        a[[row, hit]] = a[[hit, row]]
        b[[row, hit]] = b[[hit, row]]
        for r in range(n_rows):
            if r != row and a[r, col]:
                a[r] ^= a[row]
                b[r] ^= b[row]
        pivots.append(col)
        row += 1
        if row == n_rows:
            break
    if np.any(b[row:]):
        return None  # inconsistent: the goal is unreachable
    x = np.zeros(n_cols, dtype=np.uint8)
    for r, col in enumerate(pivots):
        x[col] = b[r]
    free = [c for c in range(n_cols) if c not in pivots]
    basis = []
    for f in free:
        v = np.zeros(n_cols, dtype=np.uint8)
        v[f] = 1
        for r, col in enumerate(pivots):
            v[col] = a[r, f]
        basis.append(v)
    return x, basis


def solve(state: np.ndarray, goal: np.ndarray, rows: int, cols: int) -> list[int]:
    """Buttons to press (row-major indices, ascending) that turn ``state`` into ``goal``.

    Returns the solution with the fewest presses; ``[]`` if already solved.

    Raises:
        ValueError: on wrong shapes, or if ``goal`` cannot be reached from ``state``.
    """
    n = rows * cols
    state = np.asarray(state, dtype=np.uint8).reshape(-1)
    goal = np.asarray(goal, dtype=np.uint8).reshape(-1)
    if state.shape[0] != n or goal.shape[0] != n:
        raise ValueError(f"a {rows}x{cols} grid needs {n} lights, got {state.size} and {goal.size}")
    solved = _solve_gf2(toggle_matrix(rows, cols), state ^ goal)
    if solved is None:
        raise ValueError(f"goal {goal.tolist()} is unreachable from {state.tolist()}")
    x, basis = solved
    best = x
    # The null space is tiny for OGBench grids (dim <= 4), so enumerate it.
    for coeffs in itertools.product((0, 1), repeat=len(basis)):
        cand = x.copy()
        for c, v in zip(coeffs, basis, strict=True):
            if c:
                cand ^= v
        if cand.sum() < best.sum():
            best = cand
    return [int(i) for i in np.flatnonzero(best)]


def presses_remaining(state: np.ndarray, goal: np.ndarray, rows: int, cols: int) -> int:
    """Fewest presses that still separate ``state`` from ``goal``."""
    return len(solve(state, goal, rows, cols))
