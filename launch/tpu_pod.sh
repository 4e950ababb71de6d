#!/usr/bin/env bash
# Runs one dualenc training job on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--dry-run] -- \
#       --config configs/dpr_nq_tpu.py --workdir gs://BUCKET/runs/dpr
#
# Each worker unpacks this checkout into ~/dualenc (when it changed), gets ~/dualenc/.venv-tpu from
# launch/venv.sh (pip install '.[tpu]': jax[tpu] and gcsfs for gs:// paths; a Python >= 3.11,
# installed with uv where the image has only 3.10; $PYTHON, if set here, names the workers' one;
# kept across launches until setup.py changes) and runs the same command;
# jax.distributed.initialize() finds the other workers by itself on TPU VMs (dualenc.multihost).
# Workers sharing a home directory unpack and install once, under flock, while the others wait.
# The workdir must be a gs:// URL, shared by all workers: Orbax writes one checkpoint from all
# hosts together, and a local path would give each worker its own folder.
set -euo pipefail
TPU="" ZONE="" PROJECT="" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "--tpu and --zone are required (see --help)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "pass the dualenc.train flags after --" >&2; exit 2; }
WORKDIR=""
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --workdir=*) WORKDIR="${!i#--workdir=}" ;;
    --workdir) j=$((i + 1)); WORKDIR="${!j:-}" ;;
  esac
done
[[ "$WORKDIR" == gs://?* ]] || {
  echo "--workdir must be a gs:// URL shared by all workers (got '${WORKDIR}')" >&2; exit 2; }
TRAIN_ARGS=$(printf '%q ' "$@")
# Ship this checkout (committed files) to every worker, then install and train there.
# The tree is replaced only when the archive differs from the one last unpacked, and under a lock:
# on a shared home a later worker must not delete the tree (and venv) an earlier one is using.
# .venv-* survive a new archive; launch/venv.sh rebuilds one whose setup.py hash is stale.
ARCHIVE=/tmp/dualenc-src.tar.gz
PY_ENV=""
[[ -n "${PYTHON:-}" ]] && PY_ENV="PYTHON=$(printf '%q' "$PYTHON") "
REMOTE="set -e; exec 9>>dualenc.lock; flock 9; s=\$(sha256sum < dualenc-src.tar.gz); \
mkdir -p dualenc; if [ \"\$(cat dualenc/.src-sum 2>/dev/null)\" != \"\$s\" ]; then \
find dualenc -mindepth 1 -maxdepth 1 ! -name '.venv-*' -exec rm -rf {} +; \
tar xzf dualenc-src.tar.gz -C dualenc; echo \"\$s\" > dualenc/.src-sum; fi; exec 9>&-; \
cd dualenc; ${PY_ENV}bash launch/venv.sh tpu; \
.venv-tpu/bin/python -m dualenc.train $TRAIN_ARGS"
EXTRA=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && EXTRA+=(--project "$PROJECT")
PACK=(git archive --format=tar.gz -o "$ARCHIVE" HEAD)
COPY=(gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU:dualenc-src.tar.gz" --worker=all "${EXTRA[@]}")
RUN=(gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${EXTRA[@]}" --command "$REMOTE")
if [[ $DRY -eq 1 ]]; then
  for c in PACK COPY RUN; do declare -n a=$c; printf '%q ' "${a[@]}"; echo; done
  exit 0
fi
"${PACK[@]}" && "${COPY[@]}" && exec "${RUN[@]}"
