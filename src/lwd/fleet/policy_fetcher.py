"""PolicyFetcher: a robot's downloads of policy versions, once each, from any thread.

A robot fetches a version either in the background, as soon as it hears of it (prefetch), or
between episodes, when it is about to load it; both go through :meth:`PolicyFetcher.fetch`, so
a version is downloaded at most once and two threads never write the same directory. A fetch is
checksummed and atomic (:meth:`~lwd.fleet.client.FleetClient.download_policy`): after it,
``policy_dir/<version>/`` holds the whole verified version. Fetching never loads a policy: the
:class:`~lwd.fleet.robot_agent.RobotAgent` swaps its acting policy only between episodes.

Each fetch that actually received a version logs a ``policy_received`` event to the spool
(``version``, ``sha256``, ``seen_at``, ``received_at``, ``fetch_s``, ``via``: "prefetch" or
"sync"); join ``received_at`` with the registry's ``created_at`` for publish-to-robot latency.

Usage::

    fetcher = PolicyFetcher(client, policy_dir, spool, "robot-3")
    ref = fetcher.latest()  # PolicyRef or None; raises FleetError
    path = fetcher.fetch(ref, seen_at=t0, via="prefetch")  # no-op if already received
    fetcher.receipt(ref.version)  # {"sha256", "received_at", ...} or None
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from lwd.fleet.client import FleetClient, PolicyRef
from lwd.fleet.spool import Spool


class PolicyFetcher:
    """Verified downloads into ``policy_dir/<version>/``; safe to call from several threads.

    Args:
        client: the fleet server's client (``latest_policy``, ``download_policy``).
        policy_dir: versions go to ``policy_dir/<version>/``.
        spool: where ``policy_received`` events are logged.
        robot_id: stamped on the events.
        latest: how to ask for the newest version (default ``client.latest_policy``); a host of
            many robots passes one shared, rate-limited query (see
            :class:`~lwd.fleet.robot_host.LatestPolicyCache`).
        clock: unix seconds (injectable for tests).
    """

    def __init__(
        self,
        client: FleetClient,
        policy_dir: Path,
        spool: Spool,
        robot_id: str,
        latest: Callable[[], PolicyRef | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.policy_dir = Path(policy_dir)
        self.spool = spool
        self.robot_id = robot_id
        self._latest = latest or client.latest_policy
        self._clock = clock
        self._lock = threading.Lock()  # one download at a time: both callers may want one
        self._receipts: dict[int, dict] = {}

    def latest(self) -> PolicyRef | None:
        """The newest version the server announces (None before any publish).

        Raises:
            FleetError: the server could not be asked.
        """
        return self._latest()

    def receipt(self, version: int) -> dict | None:
        """What the fetch of ``version`` recorded, or None if this process did not fetch it."""
        with self._lock:
            found = self._receipts.get(version)
            return None if found is None else dict(found)

    def fetch(self, ref: PolicyRef, *, seen_at: float, via: str) -> Path:
        """``ref``'s version in ``policy_dir/<version>/``, downloading it unless already here.

        Blocks while another thread fetches (the same or another version).

        Returns:
            The version's directory (load it with :func:`lwd.policy.checkpoint.load_policy`).

        Raises:
            RejectedError: the server refuses (e.g. no such version).
            TransientError: try again later (unreachable, corrupted in transit).
        """
        dest = self.policy_dir / str(ref.version)
        with self._lock:
            done = self._receipts.get(ref.version)
            if done is not None and done["sha256"] == ref.sha256 and dest.is_dir():
                return dest
            start = time.perf_counter()
            path = self.client.download_policy(ref.version, dest, sha256=ref.sha256)
            receipt = {
                "version": ref.version,
                "sha256": ref.sha256,
                "created_at": ref.created_at,
                "seen_at": seen_at,
                "received_at": self._clock(),
                "fetch_s": time.perf_counter() - start,
                "via": via,
            }
            self._receipts[ref.version] = receipt
        self.spool.log("policy_received", robot_id=self.robot_id, **receipt)
        return path

    def prune(self, below: int, keep: Collection[int]) -> list[int]:
        """Delete fetched versions older than ``below`` except ``keep``; returns the deleted.

        For versions received in the background but superseded before an episode boundary:
        nothing ever acted with them, so they only take disk space.
        """
        with self._lock:
            gone = [v for v in self._receipts if v < below and v not in keep]
            for version in gone:
                shutil.rmtree(self.policy_dir / str(version), ignore_errors=True)
                del self._receipts[version]
        return gone
