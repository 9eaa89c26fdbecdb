#!/usr/bin/env bash
# The GPU checks of the base preset on a lent CUDA machine (H100/H200 class) in under 8 minutes:
# benchmarks/gpu.py with bf16 autocast writes benchmarks/results/gpu.md (training steps/s,
# samples/s, MFU, peak memory and the largest batch of SCLDM's two stages and the baselines'
# steps; faces/s at batch 1 and 32). Never needed by the tests or CI.
#
#   bash benchmarks/gpu.sh                    # extra arguments go to gpu.py: --peak-tflops 989
#
# benchmarks/sampling.py is not run: it needs a trained pipeline folder and a dataset; gpu.py
# times the same sampler (the preset's saved steps and guidance) on random weights instead.
# Python: $PYTHON, else the repository's .venv, else python3; scldm is read from src/ (no
# install). On a machine without a package index, wheels in .whl/ (e.g. diffusers, lpips,
# soundfile, cffi, pycparser, soxr, importlib_metadata) are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
"$PY" -c "import torch, diffusers, lpips, scldm; assert torch.cuda.is_available(), 'no CUDA'" || {
  echo "gpu.sh: this Python lacks a package above or CUDA; nothing was measured" >&2
  exit 1
}
# gpu.py skips what is left once its 400 s budget is spent and rewrites the table after every
# part; the timeout is the hard stop (8 minutes in all, with start-up)
export PYTHONUNBUFFERED=1
exec timeout --signal=INT --kill-after=10 465 "$PY" benchmarks/gpu.py --device cuda \
  --preset base --budget 400 --out benchmarks/results/gpu.md "$@"
