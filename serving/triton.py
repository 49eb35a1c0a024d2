"""The embedded Triton launcher: the ``tritonserver`` binary bundled in ``nvidia-pytriton``.

RepoTune's one-machine default runs Triton 2.51 from the ``nvidia-pytriton`` wheel with the
python backend on CPU. Production points at a Triton server URL instead (the NGC container with
the FasterTransformer backend); nothing else in ``serving`` cares which.

Running the bundled binary directly needs four things the wheel leaves to pytriton:
the backends copied to a writable folder with the stub for *this* Python placed in
``backends/python/``; ``LD_LIBRARY_PATH`` naming the wheel's ``nvidia_pytriton.libs`` and
Python's ``LIBDIR`` (without them a model load hangs forever and SIGTERM stops working); and
this interpreter's ``bin`` first on ``PATH`` (the stub finds Python through it).

Lifecycle: start → wait until live (deadline) → serve → SIGTERM → SIGKILL after a timeout →
remove the python backend's shared-memory regions the server left behind.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

from serving.errors import TritonUnavailable

SHM_GLOB = "/dev/shm/triton_python_backend_shm_region_*"
"""Shared-memory regions the python backend creates; a killed server leaves them behind."""


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise TritonUnavailable(
            "nvidia-pytriton is not installed, so there is no embedded tritonserver binary; "
            "install it with `pip install nvidia-pytriton==0.7.0` or pass a Triton URL instead"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def tritonserver_binary() -> Path:
    """Path of the bundled ``tritonserver``; raises :class:`TritonUnavailable` if missing."""
    binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonUnavailable(f"no tritonserver binary at {binary}; reinstall nvidia-pytriton==0.7.0")
    return binary


def _mapped_shm() -> set[str]:
    """Python-backend shared-memory regions some living process still maps (another server)."""
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, errors="replace") as fh:
                for line in fh:
                    if "triton_python_backend_shm_region_" in line:
                        mapped.add(line.split()[-1])
        except OSError:
            continue
    return mapped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_on_sigterm() -> None:
    """Make SIGTERM (docker stop, kubectl delete, systemd, ``kill``) unwind like Ctrl-C.

    :class:`TritonServer` starts tritonserver in its own session, so no signal to our process
    group reaches it: it is stopped by the ``with`` block's exit (or a ``finally``), which
    Python's default SIGTERM, dying on the spot, never runs. Call this in the main thread of
    any program that starts one."""
    import signal

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


class TritonServer:
    """Run the bundled ``tritonserver`` in explicit model-control mode on 127.0.0.1.

    Use as a context manager::

        with TritonServer(repo_root) as triton:
            client_url = triton.url       # "127.0.0.1:PORT" for tritonclient.http

    Ports left as ``None`` are picked free. ``log_path`` receives the server's stdout/stderr
    (default: a file in the server's temp folder, see :attr:`log_path`).
    """

    def __init__(
        self,
        model_repository: str | Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: str | Path | None = None,
        *,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        exit_timeout_s: int = 3,
        log_verbose: int = 0,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.http_port = http_port or _free_port()
        self.grpc_port = grpc_port or _free_port()
        self.metrics_port = metrics_port or _free_port()
        self.startup_timeout_s = startup_timeout_s
        """Seconds to wait for the server to report live before giving up."""
        self.stop_timeout_s = stop_timeout_s
        """Seconds between SIGTERM and SIGKILL on stop."""
        self.exit_timeout_s = exit_timeout_s
        """Seconds tritonserver itself waits for in-flight requests after SIGTERM."""
        self.log_verbose = log_verbose
        self._log_path = Path(log_path) if log_path else None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._shm_before: set[str] = set()

    # -- properties ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint, the form tritonclient.http expects."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def command(self, backend_dir: Path) -> list[str]:
        """The exact command line the server is started with."""
        root = _pytriton_root()
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={root / 'tritonserver' / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]

    def _prepare_backends(self, workdir: Path) -> Path:
        root = _pytriton_root()
        backends = workdir / "backends"
        shutil.copytree(root / "tritonserver" / "backends", backends)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(
                f"nvidia-pytriton has no python-backend stub for Python {version} (looked at {stub}); "
                "run RepoTune with Python 3.10-3.12"
            )
        target = backends / "python" / "triton_python_backend_stub"
        shutil.copy2(stub, target)
        target.chmod(0o755)
        return backends

    def _environment(self) -> dict[str, str]:
        root = _pytriton_root()
        libs = [str(root.parent / "nvidia_pytriton.libs")]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            libs.append(str(libdir))
        env = dict(os.environ)
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        # The stub starts `python3` from PATH: it must be this interpreter's environment.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # A stub writing <version>/__pycache__ would make Triton see that version as modified
        # and reload it at the next swap (publish byte-compiles model.py for this Python).
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def start(self) -> TritonServer:
        """Start the server and wait until it is live; raises :class:`TritonUnavailable`."""
        if self.running:
            return self
        self.model_repository.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="repotune-triton-"))
        backends = self._prepare_backends(self._workdir)
        if self._log_path is None:
            self._log_path = self._workdir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._shm_before = set(glob.glob(SHM_GLOB))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self._workdir,
                start_new_session=True,
            )
        try:
            self.wait_live(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_live(self, timeout_s: float) -> None:
        """Poll ``/v2/health/live`` until it answers 200, the process dies, or the deadline passes."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        url = f"http://{self.url}/v2/health/live"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise TritonUnavailable(
                    f"tritonserver exited with code {self._proc.returncode} while starting; "
                    f"see its log at {self._log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TritonUnavailable(
                    f"tritonserver did not become live on {url} within {timeout_s:.0f}s; "
                    f"see its log at {self._log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log (empty string if there is none)."""
        if not self._log_path or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server (its whole process group, stubs included), SIGKILL after
        :attr:`stop_timeout_s`, then remove shared-memory regions it created."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if proc is not None:
            # Stubs are in the server's session; make sure none outlives it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for path in set(glob.glob(SHM_GLOB)) - self._shm_before - _mapped_shm():
            # New since start and mapped by no living process: this server's leftovers.
            try:
                os.unlink(path)
            except OSError:
                pass
        if self._workdir is not None:
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
            if self._log_path is None or self._workdir not in self._log_path.parents:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
