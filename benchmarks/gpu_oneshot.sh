#!/usr/bin/env bash
# The GPU suite in one shot on a lent GPU machine, from the repository root with the kit (`make gpu-kit`) in
# .gpu-kit/: installs the kit offline into a folder on PYTHONPATH (the project itself runs from the tree), then
# runs benchmarks/gpu_suite.py with everything it writes under OUT. Arguments after OUT go to the suite.
#   bash benchmarks/gpu_oneshot.sh "$OUT"                          # GPU_BUDGET=300 s
#   PYTHON=.rehearsal-venv/bin/python GPU_KIT=.gpu-kit-rehearsal bash benchmarks/gpu_oneshot.sh OUT --device cpu --smoke
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_oneshot.sh OUT [suite arguments...]}
shift
python=${PYTHON:-python3}
kit=${GPU_KIT:-.gpu-kit}
site=${GPU_KIT_SITE:-${TMPDIR:-/tmp}/resnest-gpu-kit-site}
mkdir -p "$out"
# A failed install does not stop the run: the suite records each row whose packages are missing, with why.
"$python" benchmarks/gpu_kit.py install --kit "$kit" --target "$site" >"$out/kit-install.log" 2>&1 ||
    echo "kit install failed (see $out/kit-install.log); running the suite anyway" | tee -a "$out/console.log"
PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" "$python" benchmarks/gpu_suite.py --out "$out" \
    --budget-s "${GPU_BUDGET:-300}" "$@" 2>&1 | tee -a "$out/console.log"
