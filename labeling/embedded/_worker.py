"""The Argilla job worker (``python -m cleanloop.labeling.embedded._worker``), with the SQLite search engine registered.

One rq worker on Argilla's ``high`` and ``default`` queues. It forks a work-horse per
job, as Argilla's own ``WorkerPool`` does; the search engine re-opens its SQLite
connection in the fork. It runs rq's scheduler too: Argilla retries a failed webhook
delivery as a scheduled job, which only a worker with the scheduler ever runs.
"""

from __future__ import annotations

import logging


def main() -> None:
    from cleanloop.labeling.embedded.boot import boot

    boot()
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
    from rq import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION)
    worker.work(with_scheduler=True)


if __name__ == "__main__":
    main()
