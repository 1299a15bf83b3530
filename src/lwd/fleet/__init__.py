"""lwd.fleet: the fleet server (HTTP API over the episode store and the policy registry), the
policy registry, the msgpack wire codec and the server's monitor; on the robot side, the
client (deadlines, retries), the on-disk spool, the RobotAgent (with its background policy
prefetcher) and the RobotHost (many robots in one process)."""

from lwd.fleet.client import (
    Backoff,
    FleetClient,
    FleetError,
    IntegrityError,
    PolicyRef,
    RejectedError,
    TransientError,
)
from lwd.fleet.monitor import FleetMonitor, RobotStatus
from lwd.fleet.policy_fetcher import PolicyFetcher
from lwd.fleet.registry import (
    InvalidArchiveError,
    InvalidPolicyError,
    PolicyInfo,
    PolicyIntegrityError,
    PolicyNotFoundError,
    PolicyRegistry,
    build_archive,
    extract_archive,
)
from lwd.fleet.robot_agent import NoPolicyError, RobotAgent
from lwd.fleet.robot_host import HostConfig, LatestPolicyCache, RobotHost, SharedPolicies
from lwd.fleet.server import create_app, run_server
from lwd.fleet.spool import DrainResult, Spool
from lwd.fleet.wire import (
    WireError,
    decode_arrays,
    decode_episode,
    encode_arrays,
    encode_episode,
    pack_array,
    unpack_array,
)

__all__ = [
    "Backoff",
    "DrainResult",
    "FleetClient",
    "FleetError",
    "FleetMonitor",
    "HostConfig",
    "IntegrityError",
    "InvalidArchiveError",
    "InvalidPolicyError",
    "LatestPolicyCache",
    "NoPolicyError",
    "PolicyFetcher",
    "PolicyInfo",
    "PolicyIntegrityError",
    "PolicyNotFoundError",
    "PolicyRef",
    "PolicyRegistry",
    "RejectedError",
    "RobotAgent",
    "RobotHost",
    "RobotStatus",
    "SharedPolicies",
    "Spool",
    "TransientError",
    "WireError",
    "build_archive",
    "create_app",
    "decode_arrays",
    "decode_episode",
    "encode_arrays",
    "encode_episode",
    "extract_archive",
    "pack_array",
    "run_server",
    "unpack_array",
]
