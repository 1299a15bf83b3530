"""One state layout for every fleet8 task.

OGBench's manipulation environments each emit their own state vector (scene: 40 numbers,
puzzle-3x3: 55). A single policy serves all tasks, so every observation is packed into one
fixed-width float32 vector; slots an environment does not have are zero, and a one-hot
environment flag says which slots are live.

======  =====  ==============================================================================
slots   width  content (OGBench's own scaling; positions relative to the table centre)
======  =====  ==============================================================================
0:6     6      arm joint positions (rad)
6:12    6      arm joint velocities (rad/s)
12:15   3      end-effector position, (xyz - [0.425, 0, 0]) * 10
15:17   2      cos, sin of end-effector yaw
17      1      gripper opening * 3 (0 closed .. 3 open)
18      1      gripper contact in [0, 1]
19:28   9      scene cube: position (scaled as above), quaternion (wxyz), cos/sin yaw
28:36   8      scene buttons 0 (drawer lock), 1 (window lock): one-hot state (2), joint pos * 120,
               joint velocity
36:40   4      scene drawer position * 18, drawer velocity, window position * 15, window velocity
40:76   36     puzzle 3x3 lights: for each of 9 buttons (row-major) one-hot state (2), joint pos
               * 120, joint velocity
76:78   2      environment flag: [1, 0] scene, [0, 1] puzzle-3x3
======  =====  ==============================================================================
"""

from __future__ import annotations

import numpy as np

ACTION_DIM = 5
"""UR5e relative end-effector control: dx, dy, dz, dyaw, dgripper, each in [-1, 1]."""

PROPRIO = slice(0, 19)
SCENE = slice(19, 40)
PUZZLE = slice(40, 76)
ENV_FLAG = slice(76, 78)
STATE_DIM = 78

ENV_KINDS = ("scene", "puzzle-3x3")
_RAW_DIMS = {"scene": 40, "puzzle-3x3": 55}


def pack_state(env_kind: str, raw: np.ndarray) -> np.ndarray:
    """Map an OGBench state observation into the shared layout.

    Args:
        env_kind: one of :data:`ENV_KINDS`.
        raw: the environment's own ``(40,)`` (scene) or ``(55,)`` (puzzle-3x3) observation.

    Returns:
        ``(STATE_DIM,)`` float32 vector.
    """
    if env_kind not in _RAW_DIMS:
        raise ValueError(f"unknown environment kind {env_kind!r}; expected one of {ENV_KINDS}")
    raw = np.asarray(raw, dtype=np.float32).reshape(-1)
    if raw.shape[0] != _RAW_DIMS[env_kind]:
        raise ValueError(
            f"{env_kind} observation has {raw.shape[0]} numbers, expected {_RAW_DIMS[env_kind]}"
        )
    out = np.zeros(STATE_DIM, dtype=np.float32)
    out[PROPRIO] = raw[:19]
    if env_kind == "scene":
        out[SCENE] = raw[19:]
        out[ENV_FLAG] = (1.0, 0.0)
    else:
        out[PUZZLE] = raw[19:]
        out[ENV_FLAG] = (0.0, 1.0)
    return out
