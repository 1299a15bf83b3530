"""Worker process for :func:`lwd.sim.ogbench_play.generate_play_store` (JSON lines, see
:mod:`lwd.workers`): each job collects one play episode and puts its segments in the store."""

from lwd.sim.ogbench_play import worker_setup
from lwd.workers import serve

if __name__ == "__main__":
    serve(worker_setup)
