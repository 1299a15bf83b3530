"""Data plane of one machine: episodes to the learner, policies to the robots, fleet capacity.

    OMP_NUM_THREADS=1 python benchmarks/data_plane.py [--quick]
        [--latency-robots 16] [--latency-s 60] [--sizes 16 32 64 128 256] [--window-s 30]

Everything goes through real processes on loopback: an ``lwd server`` (temporary root, free
port), synthetic robots (``lwd robot --synthetic``: the real RobotAgent, spool, client and
server paths, but no MuJoCo and no inference; fleet8-sized episodes, 40-270 KB, one per
``--episode-s`` per robot), and in this process a learner-side poller (commits a snapshot every
second, lists its new episodes and downloads them, like ``lwd.learner.online.HttpSource``) and
a publisher (a small real policy checkpoint every ``--publish-s``).

1. Latency, ``--latency-robots`` robots, one process each, for ``--latency-s``:
   - episode produced (``finished_at`` in the robot's events.jsonl) -> listed in a committed
     snapshot, i.e. available to the learner;
   - policy published (registry ``created_at``) -> received by the robot (``policy_received``,
     the background prefetch), and -> loaded (``policy_loaded``, only between episodes): per
     robot and version, until the robot has that version or a newer one.
2. Capacity: for each fleet size, a fresh server and robots hosted ``--per-process`` to a
   process (``lwd robot --count``), run ``--window-s``, then stopped (SIGTERM: each finishes,
   spools and drains its episode). A size is sustained when nothing is lost (every spooled
   episode is stored exactly once and acknowledged; nothing pending or refused), the P99
   episode -> learner latency is under 10 s, and the robots kept >= 80% of their pace.

Writes benchmarks/results/data_plane.json and data_plane.png (latency CDFs).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402

P99_LIMIT_S = 10.0
MIN_PACE = 0.8


# ------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lwd(args: list[str], log: Path) -> subprocess.Popen:
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lwd.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    args = ["server", "--root", str(root), "--port", str(port), "--log-level", "warning"]
    proc = lwd(args, root.parent / "server.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {(root.parent / 'server.log').read_text()[-2000:]}")


def start_robots(url: str, work: Path, prefix: str, robots: int, per_process: int, args):
    """``robots`` synthetic robots in processes of ``per_process`` (1: plain ``lwd robot``)."""
    procs, ids = [], []
    for p in range(math.ceil(robots / per_process)):
        count = min(per_process, robots - p * per_process)
        cmd = ["robot", "--server", url, "--workdir", str(work), "--synthetic"]
        cmd += ["--episode-s", str(args.episode_s), "--timeout", "10"]
        if per_process == 1:
            rid = f"{prefix}{p:03d}"
            ids.append(rid)
        else:
            rid = f"{prefix}p{p}"
            cmd += ["--count", str(count)]
            ids += [f"{rid}-{i}" for i in range(count)]
        procs.append(lwd([*cmd, "--robot-id", rid], work / f"{rid}.log"))
    return procs, ids


def stop_robots(procs: list[subprocess.Popen], timeout_s: float = 90.0) -> list[int | None]:
    """SIGTERM, then wait: each robot finishes, spools and drains its episode. None: killed."""
    for proc in procs:
        proc.terminate()
    deadline, codes = time.monotonic() + timeout_s, []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(None)
    return codes


# --------------------------------------------------------------------- learner side
class Poller(threading.Thread):
    """Every ``period_s``: commit a snapshot and list its new episodes (available from then on).

    A second thread downloads the listed episodes, as ``HttpSource`` would, so that the server
    serves the learner's reads too; it runs apart so a download backlog (the learner's own
    speed) does not delay the snapshot cadence that this benchmark measures.
    """

    def __init__(self, client, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.client, self.period_s = client, period_s
        self.available: dict[str, float] = {}  # episode id -> when the learner could see it
        self.stop = threading.Event()
        self.errors = 0
        self.downloaded = 0
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._download, daemon=True).start()

    def run(self) -> None:
        after, tick = 0, time.monotonic()
        while not self.stop.is_set():
            try:
                version = self.client.commit_snapshot()
                ids = self.client.snapshot_episode_ids(version, after=after)
                listed_at = time.time()
                for episode_id in ids:
                    self.available.setdefault(episode_id, listed_at)
                    self._queue.put(episode_id)
                after = version
            except Exception:  # noqa: BLE001  (an overloaded server: count it, keep polling)
                self.errors += 1
            tick += self.period_s
            self.stop.wait(max(0.0, tick - time.monotonic()))

    def _download(self) -> None:
        while True:
            episode_id = self._queue.get()
            try:
                self.client.get_episode(episode_id)
                self.downloaded += 1
            except Exception:  # noqa: BLE001
                self.errors += 1


class Publisher(threading.Thread):
    """Publishes the next prepared checkpoint every ``period_s``; remembers publish times."""

    def __init__(self, client, checkpoints: list[Path], period_s: float) -> None:
        super().__init__(daemon=True)
        self.client, self.checkpoints, self.period_s = client, checkpoints, period_s
        self.created_at: dict[int, float] = {}
        self.stop = threading.Event()
        self._next = 0

    def publish(self) -> int:
        ref = self.client.publish_policy(self.checkpoints[self._next % len(self.checkpoints)])
        self._next += 1
        self.created_at[ref.version] = ref.created_at
        return ref.version

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            try:
                self.publish()
            except Exception:  # noqa: BLE001
                pass


def make_checkpoints(directory: Path, count: int, width: int) -> list[Path]:
    """``count`` small fleet8-shaped policies with different weights."""
    import torch

    from lwd.config import PolicyConfig
    from lwd.policy.checkpoint import save_policy
    from lwd.policy.flow import FlowPolicy
    from lwd.policy.normalizer import Normalizer
    from lwd.sim.layout import ACTION_DIM, STATE_DIM

    cfg = PolicyConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM, width=width, depth=2)
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        norm = Normalizer(STATE_DIM, ACTION_DIM).fit(
            rng.normal(size=(64, STATE_DIM)), rng.uniform(-1, 1, (64, ACTION_DIM))
        )
        out.append(save_policy(directory / f"policy-{seed}", FlowPolicy(cfg, norm)))
    return out


# ------------------------------------------------------------------------ measuring
def robot_records(work: Path, ids: list[str]) -> dict:
    from lwd.fleet.spool import Spool

    rec = {"episodes": {}, "acked": set(), "received": {}, "loaded": {}, "pending": 0}
    rec["rejected"], rec["finishes"] = 0, {}
    for rid in ids:
        spool = Spool(work / rid / "spool")
        rec["pending"] += len(spool)
        rec["rejected"] += len(spool.rejected())
        rec["finishes"][rid] = finishes = []
        rec["received"][rid], rec["loaded"][rid] = received, loaded = [], []
        for e in spool.events():
            kind = e["event"]
            if kind == "episode":
                rec["episodes"][e["episode_id"]] = e["finished_at"]
                finishes.append(e["finished_at"])
            elif kind == "acked":
                rec["acked"].add(e["episode_id"])
            elif kind == "policy_received":
                received.append((e["version"], e["received_at"]))
            elif kind == "policy_loaded" and e.get("source") == "server":
                loaded.append((e["version"], e["loaded_at"]))
    return rec


def policy_delays(published: dict[int, float], events: dict[str, list]) -> list[float]:
    """Per robot and published version: seconds until the robot had that version or a newer
    one (a version superseded before the robot's next poll or boundary counts as reached by
    the newer one). Versions a robot never reached before it stopped are left out."""
    delays = []
    for robot_events in events.values():
        times = sorted(robot_events, key=lambda e: e[1])
        for version, created in published.items():
            reached = next((t for v, t in times if v >= version and t >= created), None)
            if reached is not None:
                delays.append(reached - created)
    return delays


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "n": 0}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50, method="higher")),
        "p99": float(np.percentile(arr, 99, method="higher")),
        "n": len(values),
    }


def run_fleet(tag: str, tmp: Path, robots: int, per_process: int, seconds: float, ckpts, args):
    """One fleet on a fresh server for ``seconds``; everything measured about it."""
    import httpx

    from lwd.fleet.client import FleetClient

    root = tmp / tag
    work = root / "robots"
    work.mkdir(parents=True)
    server, url = start_server(root / "server")
    procs: list[subprocess.Popen] = []
    client = FleetClient(url, timeout_s=30.0, retries=2)
    try:
        publisher = Publisher(client, ckpts, args.publish_s)
        publisher.publish()  # version 1 before the robots start: they act with it
        poller = Poller(client)
        poller.start()
        t0 = time.monotonic()
        started, ids = start_robots(url, work, f"{tag}-", robots, per_process, args)
        procs.extend(started)
        while len(httpx.get(f"{url}/v1/robots", timeout=10).json()) < robots:  # all registered
            if time.monotonic() - t0 > 120 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
        startup_s = time.monotonic() - t0
        publisher.start()
        start, wall_start = time.monotonic(), time.time()
        while (elapsed := time.monotonic() - start) < seconds:
            time.sleep(min(5.0, seconds - elapsed))
            m = httpx.get(f"{url}/v1/metrics", timeout=10).json()
            print(
                f"  [{tag}] {time.monotonic() - start:5.0f}/{seconds:.0f} s: {robots} robots, "
                f"{m['uploads']['stored']} episodes stored, {len(poller.available)} listed, "
                f"policy v{max(publisher.created_at)}",
                flush=True,
            )
        publisher.stop.set()
        publisher.join()
        window_s, wall_end = time.monotonic() - start, time.time()
        codes = stop_robots(procs)
        time.sleep(2.5)  # two more snapshot ticks list the episodes drained on the way out
        poller.stop.set()
        poller.join()
        final = client.commit_snapshot()
        stored = client.snapshot_episode_ids(final)
        metrics = httpx.get(f"{url}/v1/metrics", timeout=10).json()
    finally:  # an error or Ctrl-C must not leave robots or the server running
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        client.close()
        server.terminate()
        server.wait(30)

    rec = robot_records(work, ids)
    produced = rec["episodes"]
    # Latency in steady state: episodes finished inside the window (not the start-up ramp, nor
    # the burst of every robot finishing at once on SIGTERM); the loss check covers them all.
    steady = {i: t for i, t in produced.items() if wall_start <= t <= wall_end}
    to_learner = [poller.available[i] - t for i, t in steady.items() if i in poller.available]
    worst = sorted(
        (
            (poller.available[i] - t, t - wall_start)
            for i, t in steady.items()
            if i in poller.available
        ),
        reverse=True,
    )[:5]
    published = {v: t for v, t in publisher.created_at.items() if v > 1}  # v1: before robots
    received = policy_delays(published, rec["received"])
    loaded = policy_delays(published, rec["loaded"])
    lost = set(produced) - set(stored)
    zero_loss = (
        not lost
        and len(stored) == len(set(stored)) == len(produced)  # once each: content is unique
        and rec["acked"] == set(produced)
        and rec["pending"] == rec["rejected"] == 0
        and all(c == 0 for c in codes)
    )
    e2l = quantiles(to_learner)
    # Pace: the set episode time over the mean time between a robot's episodes in the window
    # (1.0: robots on time; a CPU-starved host falls behind).
    periods = []
    for times in rec["finishes"].values():
        inside = sorted(t for t in times if wall_start <= t <= wall_end)
        if len(inside) >= 2:
            periods.append((inside[-1] - inside[0]) / (len(inside) - 1))
        else:  # fewer than two in the whole window: at least that slow
            periods.append(window_s)
    pace = args.episode_s / float(np.mean(periods)) if periods else 0.0
    in_window = len(steady)
    return {
        "robots": robots,
        "processes": len(procs),
        "startup_s": startup_s,
        "window_s": window_s,
        "episodes": len(produced),
        "episodes_per_s": in_window / window_s,
        "pace": pace,
        "stored": len(stored),
        "lost": len(lost),
        "unacked": len(set(produced) - rec["acked"]),
        "pending": rec["pending"],
        "rejected": rec["rejected"],
        "robot_exit_codes_ok": all(c == 0 for c in codes),
        "duplicates_answered": metrics["uploads"]["duplicate"],
        "upload_handler_p99_s": metrics["upload_latency_s"]["p99"],
        "poller_errors": poller.errors,
        "learner_downloaded": poller.downloaded,
        "unlisted_in_window": len(steady) - len(to_learner),
        "worst_episode_to_learner": [
            {"latency_s": lat, "finished_s_into_window": at} for lat, at in worst
        ],
        "zero_loss": zero_loss,
        "episode_to_learner": e2l,
        "policy_to_robot": quantiles(received),
        "policy_to_loaded": quantiles(loaded),
        "versions_published": len(publisher.created_at),
        "sustained": zero_loss
        and len(steady) == len(to_learner)  # every episode listed
        and e2l["p99"] < P99_LIMIT_S
        and pace >= MIN_PACE,
        "load_average_1min_at_end": os.getloadavg()[0],
        "_samples": {"to_learner": to_learner, "received": received, "loaded": loaded},
    }


# --------------------------------------------------------------------------- report
def print_table(rows: list[dict]) -> None:
    head = (
        f"{'robots':>7} {'procs':>5} {'eps/s':>6} {'pace':>5} {'stored':>7} {'lost':>5} "
        f"{'e2l p50':>8} {'e2l p99':>8} {'pol p50':>8} {'pol p99':>8} {'load p50':>8} ok"
    )
    print(head)
    for r in rows:
        e, p, ld = r["episode_to_learner"], r["policy_to_robot"], r["policy_to_loaded"]
        print(
            f"{r['robots']:>7} {r['processes']:>5} {r['episodes_per_s']:>6.1f} {r['pace']:>5.2f} "
            f"{r['stored']:>7} {r['lost'] + r['pending'] + r['unacked']:>5} {e['p50']:>8.2f} "
            f"{e['p99']:>8.2f} {p['p50']:>8.2f} {p['p99']:>8.2f} {ld['p50']:>8.2f} "
            f"{'yes' if r['sustained'] else 'NO'}"
        )


def plot(latency: dict, stages: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))

    def cdf(ax, values, label, **kw):
        if values:
            xs = np.sort(values)
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label, **kw)

    s = latency["_samples"]
    cdf(a, s["to_learner"], f"{latency['robots']} robots, 1 per process", lw=2)
    for st in stages:
        cdf(a, st["_samples"]["to_learner"], f"{st['robots']} robots", lw=1, alpha=0.7)
    a.set(xlabel="episode produced -> available to learner (s)", ylabel="CDF", xscale="log")
    cdf(b, s["received"], "received (background prefetch)", lw=2)
    cdf(b, s["loaded"], "loaded (between episodes)", lw=2)
    b.set(xlabel="policy published -> robot (s)", ylabel="CDF", xscale="log")
    for ax in (a, b):
        ax.axvline(P99_LIMIT_S, color="grey", ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("lwd data plane on one machine (loopback, synthetic robots)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--latency-robots", type=int, default=16, help="robots of phase 1")
    p.add_argument("--latency-s", type=float, default=60.0, help="phase 1 duration")
    p.add_argument("--sizes", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    p.add_argument("--window-s", type=float, default=30.0, help="duration of each size")
    p.add_argument("--per-process", type=int, default=64, help="robots per process, phase 2")
    p.add_argument("--episode-s", type=float, default=10.0, help="seconds per episode")
    p.add_argument("--publish-s", type=float, default=3.0, help="seconds between publishes")
    p.add_argument("--policy-width", type=int, default=64, help="published policy's width")
    p.add_argument("--keep-going", action="store_true", help="try bigger sizes after a failure")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    args = p.parse_args()
    if args.quick:
        args.latency_robots, args.latency_s, args.sizes, args.window_s = 4, 15.0, [8], 10.0
        args.episode_s, args.publish_s = 2.0, 2.0
    setup_process()
    tmp = Path(tempfile.mkdtemp(prefix="lwd-data-plane-"))
    print(
        f"working in {tmp}; robots: synthetic (lwd robot --synthetic: real agent, spool, "
        f"client and server; no MuJoCo, no inference), one episode per {args.episode_s} s"
    )
    try:
        n_ckpt = int(max(args.latency_s, args.window_s) / args.publish_s) + 3
        ckpts = make_checkpoints(tmp / "checkpoints", n_ckpt, args.policy_width)
        from lwd.fleet.registry import build_archive

        archive_bytes = len(build_archive(ckpts[0]))
        print(f"phase 1: {args.latency_robots} robots, one process each, {args.latency_s:.0f} s")
        latency = run_fleet("lat", tmp, args.latency_robots, 1, args.latency_s, ckpts, args)
        print_table([latency])
        stages = []
        for size in args.sizes:
            print(f"phase 2: {size} robots, {args.per_process} per process, {args.window_s:.0f} s")
            stages.append(
                run_fleet(f"n{size}", tmp, size, args.per_process, args.window_s, ckpts, args)
            )
            print_table(stages)
            if not stages[-1]["sustained"] and not args.keep_going:
                break
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    passed = [s["robots"] for s in stages if s["sustained"]]
    max_ok = max(passed) if passed else 0
    e, pol, ld = (
        latency["episode_to_learner"],
        latency["policy_to_robot"],
        latency["policy_to_loaded"],
    )
    print(
        f"\nepisode -> learner P50 {e['p50']:.2f} s, P99 {e['p99']:.2f} s; policy -> robot "
        f"P50 {pol['p50']:.2f} s, P99 {pol['p99']:.2f} s (loaded: P50 {ld['p50']:.2f} s, "
        f"P99 {ld['p99']:.2f} s); largest fleet without loss: {max_ok} robots"
    )
    metrics = {
        "episode_to_learner_p50_s": e["p50"],
        "episode_to_learner_p99_s": e["p99"],
        "policy_to_robot_p50_s": pol["p50"],
        "policy_to_robot_p99_s": pol["p99"],
        "policy_to_loaded_p50_s": ld["p50"],
        "policy_to_loaded_p99_s": ld["p99"],
        "max_robots_no_loss": max_ok,
        "episodes_per_s_at_max": next(
            (s["episodes_per_s"] for s in stages if s["robots"] == max_ok), 0.0
        ),
    }
    public = lambda r: {k: v for k, v in r.items() if not k.startswith("_")}  # noqa: E731
    details = {
        "robots": "synthetic (lwd robot --synthetic): RobotAgent + spool + FleetClient + server, "
        "no MuJoCo, no inference; fleet8-shaped episodes (states (T+1, 78), T = task horizon, "
        "shorter on success)",
        "episode_s": args.episode_s,
        "publish_s": args.publish_s,
        "policy_archive_bytes": archive_bytes,
        "snapshot_period_s": 1.0,
        "learner": "commit snapshot every 1 s, list new ids, download each (like HttpSource)",
        "sizes_tried": [s["robots"] for s in stages],
        "sustained_means": f"zero loss, P99 episode->learner < {P99_LIMIT_S} s (episodes finished "
        f"inside the window), robots at >= {MIN_PACE} of their pace",
        "latency_phase": public(latency),
        "capacity_phase": [public(s) for s in stages],
        "targets": "loopback: P50 < 2 s, P99 < 10 s",
    }
    write_result("data_plane", metrics, details)
    print(f"wrote {plot(latency, stages, RESULTS / 'data_plane.png')}")


if __name__ == "__main__":
    main()
