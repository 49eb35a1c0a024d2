"""Named defaults for the bot: one constant each, followed by a docstring giving its unit.

The settings table in :mod:`bot.config` reads its defaults from here, so a default changes in
exactly one place (and ``docs/configuration.md`` shows it).
"""

from __future__ import annotations

# --- webhook -------------------------------------------------------------------------------

WEBHOOK_HOST = "127.0.0.1"
"""Interface the webhook server binds to (``0.0.0.0`` to accept forge traffic from outside)."""

WEBHOOK_PORT = 8080
"""TCP port of the webhook server."""

MAX_BODY_BYTES = 25 * 1024 * 1024
"""Largest webhook body accepted, in bytes (GitHub caps deliveries at 25 MB); larger → 413."""

DELIVERY_TTL_SECONDS = 7 * 24 * 3600
"""How long a delivery id is remembered for redelivery detection, in seconds."""

# --- queues and jobs -----------------------------------------------------------------------

QUEUES = ("ingest", "gpu", "deploy", "control")
"""RQ queue names: corpus updates (CPU), training and conversion (GPU), publishing, chat-ops/ticks."""

INGEST_RETRY_INTERVALS_SECONDS = (5, 30, 120)
"""Back-off between retries of a failed ingest job, in seconds; its length is the retry count."""

INGEST_JOB_TIMEOUT_SECONDS = 3600
"""Wall-clock limit of one ingest job, in seconds."""

GPU_JOB_TIMEOUT_SECONDS = 24 * 3600
"""Wall-clock limit of one training, evaluation or conversion job, in seconds."""

DEPLOY_JOB_TIMEOUT_SECONDS = 1800
"""Wall-clock limit of one publish/activate/rollback job, in seconds."""

CONTROL_JOB_TIMEOUT_SECONDS = 300
"""Wall-clock limit of a chat-ops or scheduler job, in seconds."""

WORKER_DEAD_AFTER_SECONDS = 420
"""A worker silent this long (no heartbeat) is dead and its job is retried or failed, in seconds
(RQ's own worker TTL; forking workers beat every 30 s even during long jobs)."""

RESULT_TTL_SECONDS = 7 * 24 * 3600
"""How long RQ keeps a finished job's result, in seconds (the run record is kept forever)."""

# --- scheduler policy ----------------------------------------------------------------------

DEBOUNCE_SECONDS = 600
"""Quiet time after the last push before a training run starts, in seconds."""

MIN_CHANGED_FILES = 5
"""Changed corpus files since the last training that make a run worthwhile (files)."""

MIN_CHANGED_BYTES = 10_000
"""Changed corpus bytes since the last training that make a run worthwhile (bytes); either
threshold suffices."""

COOLDOWN_SECONDS = 1800
"""Least time between the starts of two automatic trainings of one model, in seconds."""

RECONCILE_SECONDS = 900
"""How often every repository is fetched to catch missed webhooks, in seconds."""

LOCK_LEASE_SECONDS = 120
"""Lease of the one-training-per-model lock, in seconds; a live step renews it every third of
this, so a dead worker frees the model within one lease."""

TICK_SECONDS = 5.0
"""How often ``repotune up``'s scheduler loop calls :func:`bot.scheduler.tick`, in seconds."""

# --- serving -------------------------------------------------------------------------------

MODEL_NAME = "codegen"
"""Triton model name the proxy serves."""

KEEP_VERSIONS = 3
"""Old model versions kept in the Triton repository for rollback (versions)."""

PROXY_HOST = "127.0.0.1"
"""Interface the completion proxy binds to."""

PROXY_PORT = 5000
"""TCP port of the OpenAI-compatible completion proxy."""

# --- runs ----------------------------------------------------------------------------------

RECENT_RUNS = 20
"""Runs listed by ``repotune runs`` and the status API (runs)."""
