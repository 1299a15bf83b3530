"""Worker process for :func:`lwd.sim.ogbench_play.generate_play_store` (JSON lines, see
:mod:`lwd.workers`): each job collects one play episode and puts its segments in the store."""

from __future__ import annotations

import time
from collections.abc import Callable

from lwd.data.store import EpisodeStore
from lwd.sim.ogbench_play import PlayCollector
from lwd.sim.ogbench_tasks import ogbench_task
from lwd.workers import serve


def worker_setup(init: dict) -> Callable[[dict], dict]:
    """Job handler: ``init["store"]`` is the store directory; jobs come from generate_play_store."""
    stores: dict[str, EpisodeStore] = {}
    collectors: dict[tuple, PlayCollector] = {}

    def handle(job: dict) -> dict:
        begin = time.perf_counter()
        task = ogbench_task(job["env"], job["task_id"])
        key = (task.name, job["length"], job["noise"], job["smoothing"], job["health"])
        if key not in collectors:
            collectors[key] = PlayCollector(task, *key[1:])
        if task.name not in stores:
            stores[task.name] = EpisodeStore(init["store"], known_tasks=[task.name])
        episodes, attempts = collectors[key].episode(job["seed"], job["index"])
        for ep in episodes:
            stores[task.name].put(ep)
        return dict(
            index=job["index"],
            segments=len(episodes),
            successes=sum(ep.success for ep in episodes),
            steps=sum(ep.num_steps for ep in episodes),
            attempts=attempts,
            seconds=time.perf_counter() - begin,
        )

    return handle


if __name__ == "__main__":
    serve(worker_setup)
