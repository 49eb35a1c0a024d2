"""The completion proxy's settings, as one dataclass with no heavy imports.

:class:`ProxyConfig` lives apart from :mod:`serving.proxy` (Flask, Triton clients) so that
``bot.settings`` can build the ``[serving]`` section from its fields, defaults and attribute
docstrings without importing a web framework: each proxy limit is declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serving._auth import ApiKey
from serving.completions import RequestLimits


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of the completion proxy."""

    triton_url: str
    """``host:port`` of Triton's HTTP endpoint."""
    model_repository: str | Path
    """Root of the Triton model repository (holds ``<model>/serving.json`` and the versions)."""
    model_name: str = "codegen"
    """The default model (what a request naming no model gets); every model deployed in the repository is served by its name, and while this is the only one any name is accepted."""
    timeout_s: float = 30.0
    """Deadline of one completion request (all stream chunks together), in seconds."""
    api_keys: tuple[str | ApiKey, ...] = ()
    """Accepted API keys (``Authorization: Bearer <key>`` or ``token <key>``); empty means none needed. One entry per line (or ``;``): ``KEY`` may use every model, ``KEY:model-a,model-b`` only those models."""
    max_tokens_limit: int = 2048
    """Largest ``max_tokens`` accepted."""
    default_context_window: int = 2048
    """Context window when the serving version does not state one."""
    stream_chunk_tokens: int = 8
    """Tokens generated per Triton call when streaming."""
    extra_headers: dict[str, str] = field(default_factory=dict)
    """Headers added to every response (e.g. CORS for a browser client)."""
    family: str | None = None
    """The model family (``families`` registry name); ``None`` detects it per version."""
    strict_suffix: bool = False
    """Answer 400 to a ``suffix`` the model cannot use, instead of ignoring it with a header."""
    strict_context: bool = False
    """Answer 400 when prompt + max_tokens exceed the window (OpenAI), instead of trimming."""
    events_dir: str | Path | None = None
    """Where Tabby's ``/v1/events`` are appended as JSON lines; ``None`` validates and drops them."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body (413 before parsing; the waitress edge enforces its own too)."""
    max_prompt_chars: int = 1_000_000
    """Characters of prompt + suffix + context per request (413, checked before tokenizing)."""
    max_choices: int = 16
    """Prompts × ``n`` per request."""
    max_stops: int = 16
    """Stop strings per request."""
    max_stop_chars: int = 256
    """Characters per stop string."""
    max_concurrent_streams: int = 64
    """Streams in flight at once; one more is answered 429."""
    token_ttl_s: int = 1800
    """Lifetime of a token from ``/copilot_internal/v2/token``."""
    telemetry_dir: str | Path | None = None
    """Where served completions and editor events are recorded (:mod:`serving.telemetry`);
    ``None`` turns telemetry off (events are then only validated, feedback answers 404)."""
    store_code: bool = False
    """Also record prompts, suffixes and completion texts (off: counts and hashes only)."""
    telemetry_salt_file: str | Path | None = None
    """The secret salt of client hashes (created 0600 if missing); ``None``: ``<telemetry_dir>/.salt``."""
    telemetry_retention_days: int = 30
    """Days a telemetry file is kept."""
    telemetry_max_file_bytes: int = 64 * 1024 * 1024
    """Size at which a day's telemetry file is continued in the next one."""
    telemetry_window_s: float = 24 * 3600
    """How long after serving a completion its events are accepted (older ids: 404)."""
    telemetry_queue_size: int = 10_000
    """Records waiting for the telemetry writer; more are dropped and counted, never waited for."""

    def limits(self) -> RequestLimits:
        return RequestLimits(max_tokens=self.max_tokens_limit, max_prompt_chars=self.max_prompt_chars,
                             max_choices=self.max_choices, max_stops=self.max_stops,
                             max_stop_chars=self.max_stop_chars)


