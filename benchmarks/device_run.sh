#!/usr/bin/env bash
# Issue 18 point 6: the one command the device tool runs on a lent GPU machine (run it from the repo
# root; the tool gives at most 10 minutes a command and ~15 minutes a task, so this stops itself at
# DEVICE_TIMEOUT_S, default 500 s, and the script writes its results after every section).
#
#   run(command="bash benchmarks/device_run.sh", timeout_s=560)
#
# Results land in $OUT (what the tool brings back; default benchmarks/results): device_scale.json,
# device_scale.md, device_header.txt (nvidia-smi, CPUs, memory), gpu_util.txt (utilisation every
# second during the run) and device_scale.log (progress and tracebacks). Extra arguments go to
# benchmarks/device_scale.py (e.g. --sections kcenter,dedup to rerun two sections).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"

{
  date -u
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  else
    echo "nvidia-smi: not available"
  fi
  echo "cpus: $(nproc)"
  free -g 2>/dev/null | head -2
  df -h "${TMPDIR:-/tmp}" /dev/shm 2>/dev/null
} 2>&1 | tee "$OUT/device_header.txt"

# the first Python that imports torch: a carried .venv, then the machine's own
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY="$candidate"
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  PY=python3
  echo "no Python with torch found: running with $PY, the script reports what is missing"
fi
echo "python: $PY ($("$PY" --version 2>&1))"

DMON_PID=""
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi dmon -s um -d 1 >"$OUT/gpu_util.txt" 2>&1 &
  DMON_PID=$!
fi

timeout --signal=TERM --kill-after=15 "${DEVICE_TIMEOUT_S:-500}" \
  "$PY" benchmarks/device_scale.py --out "$OUT" "$@" 2>"$OUT/device_scale.log"
rc=$?

if [ -n "$DMON_PID" ]; then
  kill "$DMON_PID" 2>/dev/null
  wait "$DMON_PID" 2>/dev/null
fi
if [ "$rc" -ne 0 ]; then
  echo "device_scale.py exited with $rc (124: stopped at DEVICE_TIMEOUT_S); last log lines:"
  tail -n 30 "$OUT/device_scale.log"
fi
exit "$rc"
