#!/usr/bin/env bash
# Runs one dualenc training job over several GPU hosts, one process per host.
#
#   launch/gpu_cluster.sh --hosts h1,h2,h3,h4 [--port 1234] [--dry-run] -- \
#       --config configs/dpr_nq_tpu.py --workdir /shared/runs/dpr --config.model.dtype=bfloat16
#
# Under SLURM use `srun --ntasks-per-node=1 python -m dualenc.train ...` instead: JAX reads the
# SLURM variables itself. Here the first host is the coordinator; every process gets
# DUALENC_COORDINATOR_ADDRESS / DUALENC_NUM_PROCESSES / DUALENC_PROCESS_ID (dualenc.multihost).
# The checkout must exist at the same path (--dir, default $PWD) on every host. Each host runs
# from .venv-cuda12 there, made by launch/venv.sh (pip install '.[cuda12]' with a Python >= 3.11;
# $PYTHON, if set here, names the hosts' one): never the CPU .venv of `make setup`. Hosts sharing
# the checkout (NFS) build it once, under flock, while the others wait. The workdir must be
# shared by all hosts (a network filesystem or a gs:// URL).
set -euo pipefail
HOSTS="" PORT=1234 DRY=0 DIR="${DUALENC_DIR:-$PWD}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hosts) HOSTS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$HOSTS" ]] || { echo "--hosts is required (see --help)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "pass the dualenc.train flags after --" >&2; exit 2; }
IFS=, read -r -a H <<< "$HOSTS"
N=${#H[@]}
TRAIN_ARGS=$(printf '%q ' "$@")
SETUP="bash launch/venv.sh cuda12"
[[ -n "${PYTHON:-}" ]] && SETUP="PYTHON=$(printf '%q' "$PYTHON") $SETUP"
pids=()
for i in "${!H[@]}"; do
  ENV="DUALENC_COORDINATOR_ADDRESS=${H[0]}:$PORT DUALENC_NUM_PROCESSES=$N DUALENC_PROCESS_ID=$i"
  RUN=".venv-cuda12/bin/python -m dualenc.train $TRAIN_ARGS"
  REMOTE="cd $(printf '%q' "$DIR") && $SETUP && $ENV $RUN"
  if [[ $DRY -eq 1 ]]; then
    printf 'ssh %q %q\n' "${H[$i]}" "$REMOTE"
  else
    ssh "${H[$i]}" "$REMOTE" &
    pids+=($!)
  fi
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
