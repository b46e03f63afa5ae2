#!/usr/bin/env bash
# MaskDCPT pre-training on a Cloud TPU VM slice (default v5e-64), through a queued resource.
#
#   PROJECT=my-project BUCKET=my-bucket DATA=/mnt/gcs/uir2p5m_build ./launch/tpu_pod.sh all
#
# Steps (each is also a sub-command: create | install | run | status | logs | delete | all):
#   create   queue a TPU VM slice (`gcloud compute tpus queued-resources create`) and wait
#            until it is ACTIVE; a preempted / failed slice is deleted and queued again.
#   install  copy this repository to every worker, pip install it with jax[tpu], mount the
#            bucket with gcsfuse at /mnt/gcs (data and workdir live in the bucket).
#   run      start `python -m jaxmilab.main --distributed` on all workers (one process per host;
#            jax.distributed.initialize() finds the slice by itself) under nohup.
#   all      create + install + run. Re-running `all` after a preemption re-queues the slice
#            and resumes from the newest checkpoint in the workdir (bit-for-bit, trainer.py).
# See launch/README.md for the estimate of steps/hour and memory per chip.
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT=<gcp project>}"
BUCKET="${BUCKET:?set BUCKET=<gcs bucket without gs://>}"
ZONE="${ZONE:-us-west4-a}"                          # a zone with v5e capacity
ACCELERATOR="${ACCELERATOR:-v5litepod-64}"          # 64 v5e chips, 16 hosts x 4 chips
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"           # TPU VM image for v5e
TPU_NAME="${TPU_NAME:-maskdcpt-v5e64}"
QR_NAME="${QR_NAME:-${TPU_NAME}-qr}"
SPOT="${SPOT:-1}"                                   # 1: Spot VMs (preemptible, cheaper)
CONFIG="${CONFIG:-configs/maskdcpt.py:pod}"
RUN_NAME="${RUN_NAME:-maskdcpt_nafnet_uir2p5m}"
# gs://$BUCKET/runs/$RUN_NAME, seen by every worker through gcsfuse (the trainer writes with
# local file APIs; see launch/README.md "Workdir on GCS").
WORKDIR="${WORKDIR:-/mnt/gcs/runs/${RUN_NAME}}"
DATA="${DATA:-/mnt/gcs/uir2p5m_build}"              # a build_uir folder (manifest.json inside)
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                      # e.g. "--config.total_steps=1000"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gc() { gcloud "$@" --project="${PROJECT}" --zone="${ZONE}"; }
on_all() { gc compute tpus tpu-vm ssh "${TPU_NAME}" --worker=all --command="$1"; }
qr_state() {
  gc compute tpus queued-resources describe "${QR_NAME}" --format='value(state.state)' 2>/dev/null || true
}

create() {
  local state
  state="$(qr_state)"
  case "${state}" in
    ACTIVE) echo "Slice ${TPU_NAME} is ACTIVE."; return 0 ;;
    WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING) echo "Queued resource is ${state}." ;;
    SUSPENDED|SUSPENDING|FAILED)
      echo "Queued resource is ${state} (preempted or failed): deleting and queueing it again."
      gc compute tpus queued-resources delete "${QR_NAME}" --force --quiet
      state="" ;;
  esac
  if [[ -z "${state}" ]]; then
    local spot_flag=()
    [[ "${SPOT}" == "1" ]] && spot_flag=(--spot)
    gc compute tpus queued-resources create "${QR_NAME}" --node-id="${TPU_NAME}" \
      --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME}" "${spot_flag[@]}"
  fi
  until [[ "$(qr_state)" == "ACTIVE" ]]; do
    state="$(qr_state)"
    [[ "${state}" == "FAILED" ]] && { echo "Queued resource FAILED"; exit 1; }
    echo "$(date -u +%H:%M:%S) waiting for ${QR_NAME}: ${state}"; sleep 60
  done
  echo "Slice ${TPU_NAME} is ACTIVE."
}

install() {
  # Ship the working tree (not a clone: the run uses exactly this code) to every worker.
  local tarball=/tmp/jaxmilab_src.tar.gz
  tar -czf "${tarball}" -C "${REPO_DIR}" --exclude=.git --exclude='*.pyc' .
  gc compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:/tmp/jaxmilab_src.tar.gz" --worker=all
  on_all "set -e
    mkdir -p ~/jaxmilab && tar -xzf /tmp/jaxmilab_src.tar.gz -C ~/jaxmilab
    python3 -m pip install -q --upgrade pip
    python3 -m pip install -q 'jax[tpu]' -e ~/jaxmilab
    if ! mountpoint -q /mnt/gcs; then
      command -v gcsfuse >/dev/null || { \
        export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s); \
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list; \
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
        sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }
      sudo mkdir -p /mnt/gcs && sudo chown \$USER /mnt/gcs
      gcsfuse --implicit-dirs ${BUCKET} /mnt/gcs
    fi
    python3 -c 'import jax; print(jax.process_index(), jax.local_devices())'"
}

run() {
  # Same command on every host; --distributed calls jax.distributed.initialize(), which reads
  # the slice's topology from the TPU metadata. Re-running resumes from WORKDIR/checkpoints.
  on_all "cd ~/jaxmilab && mkdir -p ${WORKDIR} && \
    nohup python3 -m jaxmilab.main --distributed --config=${CONFIG} --workdir=${WORKDIR} \
      --config.data.path=${DATA} ${EXTRA_FLAGS} > ~/maskdcpt.log 2>&1 &
    sleep 5; tail -n 3 ~/maskdcpt.log"
  echo "Started. Logs: $0 logs; metrics: ${WORKDIR}/metrics.jsonl (gs://${BUCKET}/runs/${RUN_NAME});"
  echo "TensorBoard: tensorboard --logdir gs://${BUCKET}/runs/${RUN_NAME}"
}

status() { echo "queued resource: $(qr_state)"; gsutil cat "gs://${BUCKET}/runs/${RUN_NAME}/metrics.jsonl" 2>/dev/null | tail -n 2 || true; }
logs() { gc compute tpus tpu-vm ssh "${TPU_NAME}" --worker=0 --command="tail -n 50 ~/maskdcpt.log"; }
delete() { gc compute tpus queued-resources delete "${QR_NAME}" --force --quiet; }

case "${1:-all}" in
  create) create ;;
  install) install ;;
  run) run ;;
  status) status ;;
  logs) logs ;;
  delete) delete ;;
  all) create; install; run ;;
  *) echo "usage: $0 [create|install|run|status|logs|delete|all]"; exit 2 ;;
esac
