"""FleetClient: the robot's side of the fleet server's HTTP API, with deadlines and retries.

Every call has a deadline (``timeout_s``, covering all of its retries) and sorts failures in
two kinds, so a caller knows whether trying again can help:

- :class:`TransientError`: the server could not be reached, timed out, answered 5xx, 408 or
  429, or a download was corrupted in transit. Try again later.
- :class:`RejectedError`: the server refused the request (any other 4xx) and says why in
  ``.message``. Trying again sends the same refused request: never retry it.

Usage loop (see :class:`~lwd.fleet.robot_agent.RobotAgent` for the whole robot)::

    client = FleetClient("http://fleet:8000", timeout_s=10.0)
    client.register("robot-3")
    ref = client.latest_policy()  # PolicyRef(version, sha256), or None before any publish
    if ref is not None and ref.version != running:
        path = client.download_policy(ref.version, policies / str(ref.version), sha256=ref.sha256)
    client.upload_episode(ep)  # {"episode_id", "stored"}; safe to repeat (the server dedups)
    client.heartbeat("robot-3", policy_version=running, episodes_done=n, status="running")

A remote learner reads committed snapshots::

    version = client.commit_snapshot()  # or client.latest_snapshot() (None before the first)
    for episode_id in client.snapshot_episode_ids(version, after=last_version):
        ep = client.get_episode(episode_id)  # the stored Episode, arrays bit-exact

All calls are idempotent (episode uploads deduplicate on content), so retrying after a lost
answer is always safe; the one exception is :meth:`FleetClient.commit_snapshot`, whose retry
may commit one more (harmless) snapshot covering the same episodes.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from lwd.fleet.registry import POLICY_FILES, build_archive, extract_archive
from lwd.fleet.wire import decode_episode, encode_episode
from lwd.types import Episode

#: HTTP statuses that mean "not now" rather than "never": retried like a dropped connection.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
_MSGPACK = {"content-type": "application/msgpack"}
_TAR = {"content-type": "application/x-tar"}
_CHUNK = 1 << 20


class FleetError(Exception):
    """A fleet request failed; see :class:`TransientError` and :class:`RejectedError`."""


class TransientError(FleetError):
    """The request may succeed later: no connection, timeout, 5xx, 408/429, corrupt download."""


class IntegrityError(TransientError):
    """A downloaded policy's bytes do not match its checksum (corrupted in transit)."""


class RejectedError(FleetError):
    """The server refused the request (4xx); sending it again will not help.

    Attributes:
        status: the HTTP status code.
        message: the server's explanation (its JSON ``error``, or the body's text).
        code: the server's machine-readable JSON ``code`` (e.g. ``"snapshot_not_found"``,
            ``"episode_not_found"``), or None if it sent none.
    """

    def __init__(
        self, status: int, message: str, what: str = "request", code: str | None = None
    ) -> None:
        super().__init__(f"{what} refused by the fleet server ({status}): {message}")
        self.status = status
        self.message = message
        self.code = code


class PolicyRef(NamedTuple):
    """A published policy version as the server announces it.

    Read it by attribute (``ref.version``, ``ref.sha256``): it has three fields, so a
    two-name unpacking ``version, sha = ref`` fails.
    """

    version: int
    sha256: str  #: hex sha256 of the version's archive
    created_at: float | None = None  #: publish time, unix seconds (None: server did not say)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``min(max_s, base_s * factor**attempt) * U(1-j, 1)``."""

    attempts: int = 3
    """Tries in all (1 means no retry)."""
    base_s: float = 0.2
    """Delay before the first retry, seconds (before jitter)."""
    factor: float = 2.0
    """Growth of the delay per retry."""
    max_s: float = 10.0
    """Cap on one delay, seconds."""
    jitter: float = 0.5
    """Fraction of the delay drawn at random, so robots do not retry in lockstep."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Backoff.attempts must be >= 1, got {self.attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"Backoff.jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        full = min(self.max_s, self.base_s * self.factor**attempt)
        return full * (1.0 - self.jitter * rng.random())


def _error_body(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _server_message(response: httpx.Response) -> str:
    body = _error_body(response)
    if isinstance(body.get("error"), str):
        return body["error"]
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase or "no explanation given"


def _server_code(response: httpx.Response) -> str | None:
    code = _error_body(response).get("code")
    return code if isinstance(code, str) else None


def _policy_ref(body: object) -> PolicyRef:
    """A PolicyRef from ``{"version", "sha256"[, "created_at"]}``; ValueError if malformed."""
    body = _json_object(body)
    version, sha, created = body.get("version"), body.get("sha256"), body.get("created_at")
    if (
        not _is_int(version)
        or not isinstance(sha, str)
        or not (created is None or _is_num(created))
    ):
        raise ValueError(
            f"expected {{'version': int, 'sha256': str, 'created_at': float}}, got {body!r}"
        )
    return PolicyRef(version, sha, None if created is None else float(created))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {str(body)[:200]}")
    return body


def _version_arg(value: object, what: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return value


def _json(parse: Callable[[Any], Any]) -> Callable[[httpx.Response, float], Any]:
    """An ``on_response`` that parses the JSON body; ``parse`` raises ValueError if malformed
    (then the call fails as a TransientError, like any unreadable answer)."""

    def on_response(response: httpx.Response, deadline: float) -> Any:
        response.read()
        return parse(response.json())

    return on_response


def _snapshot_version(body: object) -> int | None:
    version = _json_object(body).get("version")
    if version is not None and not _is_int(version):
        raise ValueError(f"expected an int snapshot version, got {body!r}")
    return version


def _episode_ids(body: object) -> list[str]:
    ids = _json_object(body).get("episode_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"expected {{'episode_ids': [str, ...]}}, got {str(body)[:200]}")
    return ids


def _local_sha256(directory: Path) -> str | None:
    """sha256 of a downloaded checkpoint's archive, or None if it is incomplete."""
    if not all((directory / name).is_file() for name in POLICY_FILES):
        return None
    return hashlib.sha256(build_archive(directory)).hexdigest()


class FleetClient:
    """HTTP client of one fleet server; thread-safe (one connection pool).

    Args:
        base_url: the server, e.g. ``"http://fleet:8000"``.
        timeout_s: deadline of one call, all retries included, seconds.
        retries: extra tries after a :class:`TransientError` (0: try once).
        backoff: delays between those tries (its ``attempts`` is ignored; ``retries`` counts).
        download_timeout_s: deadline of :meth:`download_policy` (policies can be large).
        seed: seeds the backoff jitter.
        sleep: how to wait between retries (injectable for tests).
        transport: an httpx transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff: Backoff | None = None,
        *,
        download_timeout_s: float = 120.0,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0 or download_timeout_s <= 0:
            raise ValueError("timeouts must be positive seconds")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.download_timeout_s = float(download_timeout_s)
        self.retries = int(retries)
        self.backoff = backoff or Backoff()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ transport
    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        ok: tuple[int, ...] = (200, 201),
        timeout_s: float | None = None,
        on_response: Callable[[httpx.Response, float], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request with retries inside one deadline; returns ``on_response``'s result
        (default: the JSON body) for a status in ``ok``."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        last: TransientError | None = None
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                request = self._http.build_request(
                    method, path, timeout=httpx.Timeout(remaining), **kwargs
                )
                response = self._http.send(request, stream=True)
                try:
                    if response.status_code in ok:
                        if on_response is not None:
                            return on_response(response, deadline)
                        response.read()
                        return response.json()
                    response.read()
                finally:
                    response.close()
                status = response.status_code
                if status >= 500 or status in TRANSIENT_STATUSES:
                    raise TransientError(
                        f"{what}: fleet server at {self.base_url} answered {status}: "
                        f"{_server_message(response)}"
                    )
                raise RejectedError(
                    status, _server_message(response), what, code=_server_code(response)
                )
            except httpx.TimeoutException:
                last = TransientError(
                    f"{what}: fleet server at {self.base_url} did not answer within "
                    f"{budget:.3g} s (deadline); is it overloaded?"
                )
            except httpx.TransportError as exc:
                last = TransientError(
                    f"{what}: cannot reach the fleet server at {self.base_url} "
                    f"({type(exc).__name__}: {exc}); is it running?"
                )
            except ValueError as exc:  # a 2xx answer that is not the JSON expected
                last = TransientError(f"{what}: unreadable answer from {self.base_url} ({exc})")
            except TransientError as exc:
                last = exc
            if attempt < self.retries:
                pause = min(self.backoff.delay(attempt, self._rng), deadline - time.monotonic())
                if pause > 0:
                    self._sleep(pause)
        if last is None:
            last = TransientError(f"{what}: no time left within the {budget:.3g} s deadline")
        raise last

    # ---------------------------------------------------------------------------- calls
    def healthz(self) -> dict:
        """The server's ``/healthz`` answer."""
        return self._call("GET", "/healthz", "health check")

    def upload_episode(self, ep: Episode) -> dict:
        """Send one episode; ``{"episode_id", "stored"}`` (``stored`` False for a duplicate).

        Raises:
            RejectedError: the server refused it (invalid, too large, id reused, ...).
            TransientError: try again later.
        """
        return self._call(
            "POST",
            "/v1/episodes",
            f"upload of episode {ep.episode_id}",
            content=encode_episode(ep),
            headers=_MSGPACK,
        )

    def latest_policy(self) -> PolicyRef | None:
        """The newest published version, or None if nothing was published yet."""

        def parse(response: httpx.Response, deadline: float) -> PolicyRef | None:
            response.read()
            if response.status_code == 404:
                message, code = _server_message(response), _server_code(response)
                # Servers before error codes said so only in words.
                if code == "no_policy" or (
                    code is None and "no policy has been published" in message
                ):
                    return None
                raise RejectedError(404, message, "latest policy query", code)  # wrong base_url?
            return _policy_ref(response.json())

        return self._call(
            "GET", "/v1/policies/latest", "latest policy query", ok=(200, 404), on_response=parse
        )

    def download_policy(
        self,
        version: int,
        dest_dir: str | Path,
        etag: str | None = None,
        *,
        sha256: str | None = None,
    ) -> Path:
        """Fetch ``version``'s checkpoint into ``dest_dir``, verified, atomically.

        The body's sha256 must equal the server's ``X-Checksum-Sha256`` header and ETag (and
        ``sha256`` when given). The files are extracted into a hidden sibling directory that is
        then renamed to ``dest_dir``: ``dest_dir`` either holds the whole verified version or
        is left as it was. If ``dest_dir`` already holds files with checksum ``etag`` (computed
        from them when omitted), the server answers 304 and nothing is transferred.

        Returns:
            ``dest_dir``; load it with :func:`lwd.policy.checkpoint.load_policy`.

        Raises:
            RejectedError: no such version (404).
            IntegrityError: the body does not match its checksum (a TransientError).
            TransientError: try again later.
        """
        dest = Path(dest_dir)
        if etag is None and dest.is_dir():
            etag = _local_sha256(dest)
        headers = {"if-none-match": f'"{etag}"'} if etag else {}
        what = f"download of policy version {version}"

        def receive(response: httpx.Response, deadline: float) -> Path | None:
            if response.status_code == 304:
                return dest if _local_sha256(dest) == etag else None
            header = response.headers.get("x-checksum-sha256", "")
            tag = response.headers.get("etag", "").removeprefix("W/").strip('"')
            if not header:
                raise IntegrityError(f"{what}: the server sent no X-Checksum-Sha256 header")
            digest, body = hashlib.sha256(), bytearray()
            for chunk in response.iter_bytes(_CHUNK):
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("download deadline passed")
                digest.update(chunk)
                body += chunk
            got = digest.hexdigest()
            expected = {header} | ({tag} if tag else set()) | ({sha256} if sha256 else set())
            if expected != {got}:
                raise IntegrityError(
                    f"{what}: body of {len(body)} bytes has sha256 {got[:12]}..., expected "
                    f"{' / '.join(sorted(e[:12] + '...' for e in expected))}; corrupted in transit?"
                )
            _install(bytes(body), dest)
            return dest

        path = self._call(
            "GET",
            f"/v1/policies/{int(version)}",
            what,
            ok=(200, 304),
            timeout_s=self.download_timeout_s,
            on_response=receive,
            headers=headers,
        )
        if path is None:  # 304 for files that changed since: fetch them afresh
            return self.download_policy(version, dest, etag="", sha256=sha256)
        return path

    def publish_policy(self, checkpoint_dir: str | Path) -> PolicyRef:
        """Publish a checkpoint written by ``save_policy`` (a learner on another machine)."""
        body = build_archive(checkpoint_dir)
        answer = self._call(
            "POST",
            "/v1/policies",
            f"publish of {checkpoint_dir}",
            timeout_s=self.download_timeout_s,
            content=body,
            headers=_TAR,
        )
        return _policy_ref(answer)

    # ------------------------------------------------------------------------ snapshots
    def commit_snapshot(self) -> int:
        """Commit a snapshot of every episode stored so far; returns its version.

        A retry after a lost answer may commit one more snapshot with the same episodes.
        """
        version = self._call(
            "POST", "/v1/snapshots", "snapshot commit", on_response=_json(_snapshot_version)
        )
        if version is None:
            raise TransientError(f"snapshot commit: {self.base_url} answered no version")
        return version

    def latest_snapshot(self) -> int | None:
        """The newest committed snapshot version, or None if none was committed yet."""
        return self._call(
            "GET",
            "/v1/snapshots/latest",
            "latest snapshot query",
            on_response=_json(_snapshot_version),
        )

    def snapshot_episode_ids(self, version: int, after: int | None = None) -> list[str]:
        """Ids of the episodes in snapshot ``version`` that are not in snapshot ``after``.

        Args:
            version: a committed snapshot version.
            after: an older committed version (0: before any snapshot); None lists every
                episode of ``version``.

        Returns:
            The ids in commit order (oldest first).

        Raises:
            RejectedError: an unknown version (404, code ``"snapshot_not_found"``), or
                ``after`` newer than ``version`` (400).
            TransientError: try again later.
        """
        version = _version_arg(version, "snapshot version")
        params = {} if after is None else {"after": _version_arg(after, "after")}
        return self._call(
            "GET",
            f"/v1/snapshots/{version}/episodes",
            f"episode list of snapshot {version}",
            params=params,
            on_response=_json(_episode_ids),
        )

    def get_episode(self, episode_id: str) -> Episode:
        """The stored episode with this id, decoded from the server's msgpack.

        Raises:
            RejectedError: no such episode (404, code ``"episode_not_found"``).
            TransientError: try again later (an undecodable body counts as one too).
        """

        def receive(response: httpx.Response, deadline: float) -> Episode:
            return decode_episode(response.read())  # WireError is a ValueError: transient

        return self._call(
            "GET",
            f"/v1/episodes/{quote(episode_id, safe='')}",
            f"download of episode {episode_id}",
            ok=(200,),
            on_response=receive,
        )

    # --------------------------------------------------------------------------- robots
    def register(self, robot_id: str) -> int | None:
        """Announce a robot; returns the latest policy version (None: none published)."""
        answer = self._call(
            "POST", f"/v1/robots/{robot_id}/register", f"registration of {robot_id}"
        )
        return answer.get("latest_policy")

    def heartbeat(
        self,
        robot_id: str,
        policy_version: int | None,
        episodes_done: int,
        status: str = "running",
    ) -> int | None:
        """Report that a robot is alive; returns the latest policy version (None: none)."""
        beat = {"policy_version": policy_version, "episodes_done": episodes_done, "status": status}
        answer = self._call(
            "POST", f"/v1/robots/{robot_id}/heartbeat", f"heartbeat of {robot_id}", json=beat
        )
        return answer.get("latest_policy")


def _install(archive: bytes, dest: Path) -> None:
    """Extract ``archive`` beside ``dest`` and rename it into place (replacing ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        extract_archive(archive, staging)
        for name in os.listdir(staging):
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        if dest.exists():
            old = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.old"
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
