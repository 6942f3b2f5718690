#!/usr/bin/env bash
# GPU checks and figures, on a machine with an NVIDIA GPU and fedmtl's dependencies importable:
#   benchmarks/gpu.sh OUT_DIR
# 1. the Gramian precision tests on CUDA; 2. the direct engine's tests (Ray on the GPU machine);
# 3. a run with GPU clients and aggregation on the GPU, checked from its run files;
# 4. aggregation cost on CUDA and 5. engine overhead with GPU clients, into OUT_DIR/BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
echo "== 1. Gramian tests on CUDA"
FEDMTL_TEST_DEVICE=cuda $py -m pytest -q -p no:cacheprovider tests/aggregation/test_gramian.py 2>&1 | tail -3
echo "== 2. direct engine tests"
timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_direct_engine.py -k "not both_engines" 2>&1 | tail -3
echo "== 3. GPU clients (4 x 0.25 GPU), aggregation on cuda"
timeout 120 $py simulate.py --set rounds=3 --set resources.client_gpus=0.25 --set server.device=cuda \
  --set server.aggregator=upgrad --set output.run_dir="$out/gpu-run" | tail -8
$py - "$out/gpu-run" <<'PY'
import sys
from pathlib import Path
from fedmtl.runfiles.rundir import read_rows
rows = read_rows(Path(sys.argv[1]) / "clients.jsonl")
print("clients on GPU:", sum(r["on_gpu"] == 1 for r in rows), "of", len(rows), "| assigned GPU ids:", sorted({r["assigned_gpu"] for r in rows}))
PY
cp BENCHMARKS.md "$out/BENCHMARKS.md"
echo "== 4. aggregation cost on CUDA"
timeout 200 $py benchmarks/aggregation.py --device cuda --repeats 3 > "$out/aggregation.log" 2>&1; tail -4 "$out/aggregation.log"
echo "== 5. engine overhead with GPU clients"
timeout 220 $py benchmarks/overhead.py --rounds 8 --set resources.client_gpus=0.25 --section overhead_gpu > "$out/overhead.log" 2>&1; grep "^|" "$out/overhead.log"
cp BENCHMARKS.md "$out/BENCHMARKS.md"
