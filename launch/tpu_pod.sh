#!/usr/bin/env bash
# Runs one dualenc training job on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--dry-run] -- \
#       --config configs/dpr_nq_tpu.py --workdir gs://BUCKET/runs/dpr
#
# Each worker installs this checkout with the `tpu` extra (pip install '.[tpu]': jax[tpu] and
# gcsfs for gs:// paths) and runs the same command; jax.distributed.initialize() finds the other
# workers by itself on TPU VMs (dualenc.multihost). The workdir must be a gs:// URL, shared by
# all workers: Orbax writes one checkpoint from all hosts together, and a local path would give
# each worker its own folder.
set -euo pipefail
TPU="" ZONE="" PROJECT="" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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
ARCHIVE=/tmp/dualenc-src.tar.gz
REMOTE="set -e; rm -rf dualenc && mkdir dualenc && tar xzf dualenc-src.tar.gz -C dualenc; \
cd dualenc; python3 -m venv .venv && .venv/bin/pip install -q '.[tpu]' && \
.venv/bin/python -m dualenc.train $TRAIN_ARGS"
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
