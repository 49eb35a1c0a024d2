#!/usr/bin/env bash
# GPU check (docs/gpu-plan.md): full fine-tuning with ZeRO-2, LoRA, python-backend completions and
# FasterTransformer conversion on one GPU, under 8 minutes; `--smoke` runs the same code on CPU
# with tiny shapes. The work is in benchmarks/gpu_check.py; this wrapper only picks the Python.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke    # anywhere (CI)
#
# PYTHON overrides the interpreter (default: the repository's .venv, else python3 on PATH).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
exec "$python" "$here/gpu_check.py" "$@"
