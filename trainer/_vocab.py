"""A real StarCoder2 vocabulary, offline: fetched once from the llama-cpp-python sdist.

No package ships a code model's weights, but llama-cpp-python's source distribution carries
llama.cpp's vocabulary-only test files, among them ``ggml-vocab-starcoder.gguf`` (49,152
tokens, ``<fim_prefix>`` = 1, ``<fim_middle>`` = 2, ``<fim_suffix>`` = 3). Transformers loads it
with ``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` once the ``gguf`` package is
installed. The tests use it to check the registry and the FIM transform against a real
tokenizer rather than only our tiny ones.

Run ``make vocab`` (or ``python -m trainer._vocab [cache_dir]``): it downloads the pinned sdist
with pip, extracts the one file, deletes the archive, and does nothing when the file is there.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "llama-cpp-python"
SDIST_VERSION = "0.3.16"
"""Pinned so the vocabulary file (and so the token ids the tests assert) never changes under us."""
MEMBER = "vendor/llama.cpp/models/ggml-vocab-starcoder.gguf"
"""The file inside the sdist (below its top-level ``llama_cpp_python-<version>/`` folder)."""
STARCODER_GGUF = Path(MEMBER).name
DEFAULT_CACHE = Path(".cache/vocab")
"""Relative to the repository root (gitignored)."""


def ensure_starcoder_vocab(cache_dir: Path | str = DEFAULT_CACHE) -> Path:
    """The path of ``ggml-vocab-starcoder.gguf`` in ``cache_dir``, downloading it the first time.

    Idempotent: an existing file is returned untouched. Raises ``RuntimeError`` naming the pip
    command that failed (usually: no network on a fresh machine).
    """
    from durable import write_atomic

    cache = Path(cache_dir)
    target = cache / STARCODER_GGUF
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = _download(cache)
    prefix = f"llama_cpp_python-{SDIST_VERSION}/"
    with tarfile.open(archive, "r:gz") as tar:
        try:
            member = tar.getmember(prefix + MEMBER)
        except KeyError:
            raise RuntimeError(f"{archive} has no {prefix + MEMBER}; the pinned {SDIST}=={SDIST_VERSION} "
                               "changed layout: pick a 0.3.x release that still ships it") from None
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    write_atomic(target, data)
    archive.unlink()
    return target


def _download(cache: Path) -> Path:
    archive = cache / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    if archive.is_file():
        return archive
    # --no-binary for this one package only: pip still prepares the sdist's metadata, and
    # `:all:` would force its build backend (scikit-build-core) to be built from source too.
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", SDIST,
               "--dest", str(cache), f"{SDIST}=={SDIST_VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not archive.is_file():
        raise RuntimeError(f"could not download the {SDIST} sdist with `{' '.join(command)}` "
                           f"(exit {done.returncode}): {done.stderr.strip()[-800:]}; check network access "
                           f"to PyPI, or copy {STARCODER_GGUF} into {cache} by hand")
    return archive


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer._vocab [cache_dir]``: print the vocabulary file's path."""
    args = sys.argv[1:] if argv is None else argv
    print(ensure_starcoder_vocab(Path(args[0]) if args else DEFAULT_CACHE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
