"""RQ cron configuration for the scheduler service: ``rq cron /app/deploy/rq_cron.py --url $REDIS_URL``.

``repotune up`` ticks the scheduler itself; a deployment of separate processes has no such loop,
so this enqueues :func:`bot.jobs.tick_job` (debounce, thresholds, cooldown, reconcile, abandoned-run
cleanup) on the ``control`` queue every ``policy.tick_seconds``, where a CPU worker runs it.
Run exactly one scheduler: ticks are cheap but need not be doubled.
"""

from rq import cron

from bot import config, jobs

SETTINGS = config.load()

cron.register(jobs.tick_job, "control", interval=max(1, round(SETTINGS.policy.tick_seconds)),
              job_timeout=300, result_ttl=60, name="repotune-scheduler-tick")
