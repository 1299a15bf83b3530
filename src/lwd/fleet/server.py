"""The fleet server: an HTTP API over the EpisodeStore and the PolicyRegistry.

Layout of ``root``: ``store/`` (:class:`~lwd.data.store.EpisodeStore`) and ``policies/``
(:class:`~lwd.fleet.registry.PolicyRegistry`); a new server over the same root carries on
where the old one stopped (only the in-memory counters and robot roster start afresh).

Endpoints (errors are JSON ``{"error": message}`` with a 4xx status, plus a machine-readable
``"code"`` where a client has to tell one 404 from another: ``no_policy``,
``policy_not_found``, ``snapshot_not_found``, ``episode_not_found``)::

    POST /v1/episodes                  msgpack episode -> 201 {"episode_id", "stored"}
                                       400 undecodable, 409 id reused, 413 too large,
                                       415 not msgpack, 422 invalid episode
    GET  /v1/episodes/{id}             -> the msgpack episode (lwd.fleet.wire); 404 unknown id
    POST /v1/snapshots                 -> 201 {"version", "episodes"}
    GET  /v1/snapshots/latest          -> {"version" (or null), "episodes", "episodes_stored"}
    GET  /v1/snapshots/{v}/episodes?after=A
                                       -> {"version", "after" (or null), "episode_ids"}: ids in
                                       snapshot v but not in snapshot A (all of v's without
                                       after; after=0 means before any snapshot), in commit
                                       order; 404 unknown v or A, 400 A > v
    POST /v1/policies                  tar of a checkpoint -> 201 {"version", "sha256",
                                       "created_at"}; 400, 422
    GET  /v1/policies/latest           -> {"version", "sha256", "created_at"} (publish time,
                                       unix seconds); 404 code "no_policy" before the first
    GET  /v1/policies/{v}              -> the tar; ETag "<sha256>", X-Checksum-Sha256,
                                       X-Policy-Version, X-Policy-Created-At; 304
    POST /v1/robots/{id}/register      optional JSON heartbeat -> {"robot_id", "latest_policy"}
    POST /v1/robots/{id}/heartbeat     {"policy_version", "episodes_done", "status"}
                                       -> {"latest_policy"}
    GET  /v1/robots                    -> {id: status} of every robot seen since start
    GET  /healthz                      -> {"ok": true, ...}
    GET  /v1/metrics                   JSON counters, gauges, latencies, robots
    GET  /metrics                      the same in Prometheus text format (``lwd_`` names)

Usage::

    app = create_app(Path("runs/fleet"), known_tasks=suite.task_names)  # ASGI app, or
    run_server(Path("runs/fleet"), host="0.0.0.0", port=8000)  # blocking, with uvicorn

Heavy work (decoding, validation, Parquet writes, tar building) runs on the threadpool, never
on the event loop: endpoints are plain ``def``, or read the body and hand it to
``run_in_threadpool``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lwd.data.schema import EpisodeValidationError
from lwd.data.store import (
    EpisodeConflictError,
    EpisodeNotFoundError,
    EpisodeStore,
    SnapshotNotFoundError,
)
from lwd.fleet.monitor import FleetMonitor, Gauge
from lwd.fleet.registry import (
    InvalidArchiveError,
    InvalidPolicyError,
    PolicyIntegrityError,
    PolicyNotFoundError,
    PolicyRegistry,
)
from lwd.fleet.wire import WireError, decode_episode, encode_episode

#: Default upload limits, bytes.
MAX_EPISODE_BYTES = 256 * 1024 * 1024
MAX_POLICY_BYTES = 1024 * 1024 * 1024
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
TAR_TYPES = ("application/x-tar", "application/octet-stream")
_ROBOT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class Heartbeat(BaseModel):
    """What a robot reports now and then (all fields optional on registration)."""

    model_config = ConfigDict(extra="forbid")

    policy_version: Annotated[int | None, Field(ge=0)] = None
    """The policy version the robot runs; None before it loaded one."""
    episodes_done: Annotated[int, Field(ge=0)] = 0
    """Episodes finished since the robot started."""
    status: Annotated[str, Field(max_length=64)] = ""
    """Free-form state, e.g. "running", "idle", "intervening"."""


class _TooLarge(Exception):
    pass


async def _read_upload(
    request: Request,
    media_types: tuple[str, ...],
    limit: int,
    *,
    what: str,
    type_hint: str,
    size_hint: str = "",
    rejected: Callable[[str], None] | None = None,
) -> bytearray:
    """An upload's body: 415 unless its Content-Type is one of ``media_types``, 413 over
    ``limit`` bytes; ``rejected(reason)`` is told of either."""
    if _media_type(request) not in media_types:
        if rejected is not None:
            rejected("unsupported_media_type")
        raise _error(
            415,
            f"{what} uploads must be Content-Type {media_types[0]}, got "
            f"{request.headers.get('content-type')!r} ({type_hint})",
        )
    try:
        return await _read_body(request, limit)
    except _TooLarge as exc:
        if rejected is not None:
            rejected("too_large")
        raise _error(
            413,
            f"{what} upload of {exc.args[0]} bytes exceeds the server's limit of {limit} "
            f"bytes{size_hint}",
        ) from None


@dataclass
class _Fleet:
    store: EpisodeStore
    registry: PolicyRegistry
    monitor: FleetMonitor
    max_episode_bytes: int
    max_policy_bytes: int
    put_lock: threading.Lock


def _error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
) -> HTTPException:
    """An error answered as ``{"error": message}``, plus ``"code": code`` when given."""
    detail: str | dict[str, str] = message if code is None else {"error": message, "code": code}
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytearray:
    """The request body, refusing (before reading it all) anything over ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise _error(400, f"invalid Content-Length header {length!r}")
        if int(length) > limit:
            raise _TooLarge(int(length))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge(len(body))
    return body


def _robot_id(robot_id: str) -> str:
    if not _ROBOT_ID.fullmatch(robot_id):
        raise _error(
            400,
            f"invalid robot id {robot_id!r}; expected 1-128 letters, digits, '_', '.', ':' or '-'",
        )
    return robot_id


def _etag_matches(header: str | None, sha256: str) -> bool:
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False


def _gauges(fleet: _Fleet) -> dict[str, Gauge]:
    latest_snapshot = fleet.store.latest_snapshot()
    latest_policy = fleet.registry.latest()
    return {
        "episodes_stored": Gauge("Episodes in the store.", len(fleet.store)),
        "latest_snapshot": Gauge("Newest snapshot version (NaN: none yet).", latest_snapshot),
        "latest_policy": Gauge("Newest policy version (NaN: none yet).", latest_policy),
    }


def create_app(
    root: Path,
    known_tasks: Collection[str] | None = None,
    *,
    max_episode_bytes: int = MAX_EPISODE_BYTES,
    max_policy_bytes: int = MAX_POLICY_BYTES,
    monitor: FleetMonitor | None = None,
) -> FastAPI:
    """The fleet server's ASGI app over the store and registry under ``root``.

    Args:
        root: the server's directory (created if missing): ``root/store``, ``root/policies``.
        known_tasks: task names to accept episodes of; ``None`` accepts any.
        max_episode_bytes: larger episode uploads are refused with 413.
        max_policy_bytes: larger policy archives are refused with 413.
        monitor: counters and robot roster; a fresh one if omitted.

    Returns:
        The app; ``app.state.fleet`` holds its ``store``, ``registry`` and ``monitor``.
    """
    root = Path(root)
    fleet = _Fleet(
        store=EpisodeStore(root / "store", known_tasks=known_tasks),
        registry=PolicyRegistry(root / "policies"),
        monitor=monitor or FleetMonitor(),
        max_episode_bytes=max_episode_bytes,
        max_policy_bytes=max_policy_bytes,
        put_lock=threading.Lock(),
    )
    app = FastAPI(title="lwd fleet server", version="1")
    app.state.fleet = fleet

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail)}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, 422)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        # Still logged (and re-raised) by Starlette; the client gets JSON like every error.
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    # ---------------------------------------------------------------------------- episodes
    def ingest(body: bytearray) -> tuple[str, bool]:
        start = time.perf_counter()
        try:
            ep = decode_episode(body)
        except WireError as exc:
            fleet.monitor.record_rejection("undecodable")
            raise _error(400, str(exc)) from None
        try:
            # Serialised so that "was it new?" is exact: store.put takes its own write lock
            # for the Parquet write anyway, so this costs little concurrency.
            with fleet.put_lock:
                before = len(fleet.store)
                episode_id = fleet.store.put(ep)
                stored = len(fleet.store) > before
        except EpisodeValidationError as exc:
            fleet.monitor.record_rejection("invalid")
            raise _error(422, str(exc)) from None
        except EpisodeConflictError as exc:
            fleet.monitor.record_rejection("conflict")
            raise _error(409, str(exc)) from None
        fleet.monitor.record_upload(stored, time.perf_counter() - start)
        return episode_id, stored

    @app.post("/v1/episodes", status_code=201)
    async def upload_episode(request: Request) -> dict:
        body = await _read_upload(
            request,
            MSGPACK_TYPES,
            fleet.max_episode_bytes,
            what="episode",
            type_hint="encode with lwd.fleet.wire",
            size_hint="; record shorter episodes or smaller images",
            rejected=fleet.monitor.record_rejection,
        )
        episode_id, stored = await run_in_threadpool(ingest, body)
        return {"episode_id": episode_id, "stored": stored}

    @app.get("/v1/episodes/{episode_id}")
    def download_episode(episode_id: str) -> Response:
        try:
            ep = fleet.store.get(episode_id)
        except EpisodeNotFoundError:
            raise _error(
                404, f"no episode {episode_id!r} is stored", code="episode_not_found"
            ) from None
        return Response(encode_episode(ep), media_type=MSGPACK_TYPES[0])

    # --------------------------------------------------------------------------- snapshots
    @app.post("/v1/snapshots", status_code=201)
    def commit_snapshot() -> dict:
        version = fleet.store.snapshot()
        fleet.monitor.record_snapshot()
        return {"version": version, "episodes": len(fleet.store.episode_ids(version))}

    @app.get("/v1/snapshots/latest")
    def latest_snapshot() -> dict:
        version = fleet.store.latest_snapshot()
        episodes = 0 if version is None else len(fleet.store.episode_ids(version))
        return {"version": version, "episodes": episodes, "episodes_stored": len(fleet.store)}

    def snapshot_ids(version: int) -> list[str]:
        try:
            return fleet.store.episode_ids(version)
        except SnapshotNotFoundError:
            latest = fleet.store.latest_snapshot()
            have = f"versions 1..{latest} exist" if latest else "none was committed yet"
            raise _error(
                404,
                f"no snapshot version {version}; {have} (POST /v1/snapshots commits one)",
                code="snapshot_not_found",
            ) from None

    @app.get("/v1/snapshots/{version}/episodes")
    def snapshot_episodes(version: int, after: Annotated[int | None, Query(ge=0)] = None) -> dict:
        if after is not None and after > version:
            raise _error(
                400,
                f"after={after} is newer than snapshot version {version}; "
                "ask for the episodes of a newer version since an older one",
            )
        # Snapshots are cut by insertion sequence, so snapshot `after`'s ids are a prefix of
        # `version`'s; the set difference keeps commit order without relying on that.
        ids = snapshot_ids(version)
        if after:  # after=0: before the first snapshot, i.e. nothing
            old = set(snapshot_ids(after))
            ids = [i for i in ids if i not in old]
        return {"version": version, "after": after, "episode_ids": ids}

    # ---------------------------------------------------------------------------- policies
    @app.post("/v1/policies", status_code=201)
    async def publish_policy(request: Request) -> dict:
        body = await _read_upload(
            request,
            TAR_TYPES,
            fleet.max_policy_bytes,
            what="policy",
            type_hint="send PolicyRegistry.archive bytes",
        )
        try:
            version = await run_in_threadpool(fleet.registry.publish_archive, body)
        except InvalidArchiveError as exc:
            raise _error(400, str(exc)) from None
        except InvalidPolicyError as exc:
            raise _error(422, str(exc)) from None
        fleet.monitor.record_publish()
        return policy_ref(version)

    def policy_ref(version: int) -> dict:
        info = fleet.registry.info(version)
        return {"version": info.version, "sha256": info.sha256, "created_at": info.created_at}

    @app.get("/v1/policies/latest")
    def latest_policy() -> dict:
        version = fleet.registry.latest()
        if version is None:
            raise _error(
                404, "no policy has been published yet (POST /v1/policies)", code="no_policy"
            )
        return policy_ref(version)

    @app.get("/v1/policies/{version}")
    def download_policy(version: int, request: Request) -> Response:
        try:
            info = fleet.registry.info(version)
        except PolicyNotFoundError as exc:
            raise _error(404, str(exc), code="policy_not_found") from None
        sha256 = info.sha256
        headers = {
            "ETag": f'"{sha256}"',
            "X-Checksum-Sha256": sha256,
            "X-Policy-Version": str(version),
            "X-Policy-Created-At": repr(float(info.created_at)),
        }
        if _etag_matches(request.headers.get("if-none-match"), sha256):
            return Response(status_code=304, headers=headers)
        try:
            data = fleet.registry.archive(version)
        except PolicyIntegrityError as exc:
            raise _error(500, str(exc)) from None
        return Response(data, media_type="application/x-tar", headers=headers)

    # ------------------------------------------------------------------------------ robots
    @app.post("/v1/robots/{robot_id}/register")
    def register(robot_id: str, beat: Heartbeat | None = None) -> dict:
        beat = beat or Heartbeat()
        fleet.monitor.heartbeat(_robot_id(robot_id), **beat.model_dump())
        return {"robot_id": robot_id, "latest_policy": fleet.registry.latest()}

    @app.post("/v1/robots/{robot_id}/heartbeat")
    def heartbeat(robot_id: str, beat: Heartbeat) -> dict:
        fleet.monitor.heartbeat(_robot_id(robot_id), **beat.model_dump())
        return {"latest_policy": fleet.registry.latest()}

    @app.get("/v1/robots")
    def robots() -> dict:
        return fleet.monitor.robots()

    # ----------------------------------------------------------------------------- health
    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "ok": True,
            "uptime_s": fleet.monitor.uptime_s,
            "latest_snapshot": fleet.store.latest_snapshot(),
            "latest_policy": fleet.registry.latest(),
        }

    @app.get("/v1/metrics")
    def metrics_json() -> dict:
        return fleet.monitor.to_json(_gauges(fleet))

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_prometheus() -> PlainTextResponse:
        return PlainTextResponse(
            fleet.monitor.to_prometheus(_gauges(fleet)),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    return app


def run_server(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    known_tasks: Collection[str] | None = None,
    *,
    max_episode_bytes: int = MAX_EPISODE_BYTES,
    log_level: str = "info",
) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted (blocking).

    Args:
        root: the server's directory.
        host: interface to bind ("0.0.0.0" for every interface, so robots can reach it).
        port: TCP port.
        known_tasks: task names to accept; ``None`` accepts any.
        max_episode_bytes: episode upload limit.
        log_level: uvicorn's log level.
    """
    app = create_app(root, known_tasks, max_episode_bytes=max_episode_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)
