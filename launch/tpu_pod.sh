#!/usr/bin/env bash
# MaskDCPT pre-training on Cloud TPU VM slices (one, or NUM_SLICES joined by the data-centre
# network: Multislice) through one queued resource, with a supervisor that re-queues them and
# resumes training after a (Spot) preemption or a crash.
#
#   PROJECT=my-project BUCKET=my-bucket ./launch/tpu_pod.sh all      # runs until training ends
#
# Sub-commands:
#   create     queue the slice(s) (`gcloud compute tpus queued-resources create`; NUM_SLICES > 1:
#              `--node-count=NUM_SLICES --node-prefix=TPU_NAME`, nodes TPU_NAME-0 ... -N-1) and wait
#              until it is ACTIVE; a SUSPENDED / FAILED queued resource is deleted and queued again.
#   install    ship the git-tracked files of this checkout (`git ls-files`: no .venv, build
#              outputs or workdirs) to every worker, create a Python >= ${PYTHON_VERSION} virtual
#              environment with uv (TPU VM images run Ubuntu 22.04, whose python3 is 3.10) and
#              install the package with the [tpu] extra under constraints.txt.
#   clean      on every worker of every slice: kill the previous training process (its process
#              group) and whatever still holds the TPU (TPU_DEVICES, as MaxText's kill script
#              does with /dev/vfio), and remove libtpu's lock file (LIBTPU_LOCK); `run` does it.
#   run        clean, then start `python -m jaxmilab.main --distributed` on every worker of every
#              slice, in the background; it resumes from the newest checkpoint in WORKDIR.
#   supervise  the watching loop: every SUPERVISE_POLL seconds, read the queued resource's state;
#              if it is not ACTIVE and not queued (SUSPENDED, FAILED or gone: preempted), delete
#              it, re-create it, install and run again. Otherwise read the training status of
#              EVERY worker: all ended with 0: stop when the final checkpoint exists, restart
#              otherwise (SIGTERM); one ended with 2 (a NaN / Inf loss, or a config mistake: it
#              would recur at the same step): stop for good, no retry; any other non-zero exit
#              (a crash; the other workers hang in collectives): clean and restart (at most
#              MAX_FAILURES in a row). Run it where it can keep going for the whole job (a small
#              VM, or tmux / nohup on a workstation).
#   all        create + install + run + supervise.
#   status     queued-resource state and the newest metrics line; logs: worker 0's log;
#   delete     give the slice back.
#
# Accelerators (ACCELERATOR / RUNTIME; every multi-host slice has 4 chips per worker VM):
#   v4-32          tpu-ubuntu2204-base     16 chips,  4 workers (v4-N counts TensorCores, 2 a chip)
#   v5litepod-64   v2-alpha-tpuv5-lite     64 v5e chips, 16 workers (default)
#   v5p-128        v2-alpha-tpuv5          64 chips, 16 workers (v5p-N counts TensorCores)
#   v6e-64         v2-alpha-tpuv6e         64 chips, 16 workers
# and pick a ZONE that offers it. configs/maskdcpt.py:pod uses mesh.fsdp=4 (chips per worker).
# Multislice: NUM_SLICES=2 ACCELERATOR=v5litepod-256 CONFIG=configs/maskdcpt.py:multislice (data
# parallel across slices, FSDP inside; the queued resource sets the Megascale environment that
# jax.distributed.initialize() reads on every host).
# See launch/README.md for the estimate of steps/hour and memory per chip.
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT=<gcp project>}"
ZONE="${ZONE:-us-west4-a}"                          # a zone with capacity for ACCELERATOR
ACCELERATOR="${ACCELERATOR:-v5litepod-64}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
TPU_NAME="${TPU_NAME:-maskdcpt-v5e64}"
QR_NAME="${QR_NAME:-${TPU_NAME}-qr}"
SPOT="${SPOT:-1}"                                   # 1: Spot VMs (preemptible, cheaper)
CONFIG="${CONFIG:-configs/maskdcpt.py:pod}"
RUN_NAME="${RUN_NAME:-maskdcpt_nafnet_uir2p5m}"
# The trainer writes checkpoints, metrics.jsonl and TensorBoard events to gs:// directly.
if [[ -z "${WORKDIR:-}" ]]; then
  WORKDIR="gs://${BUCKET:?set BUCKET=<gcs bucket without gs://> (or WORKDIR)}/runs/${RUN_NAME}"
fi
# A build_uir folder (manifest.json inside), read by every worker: gs://BUCKET/... is mounted
# read-only at /mnt/gcs with gcsfuse (the ArrayRecord reader needs a file system), or a folder
# already on every worker. DATA="" passes no --config.data.path (configs with their own data).
DATA="${DATA-/mnt/gcs/uir2p5m_build}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                      # e.g. "--config.total_steps=1000"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"            # the pinned jax needs Python >= 3.11
SUPERVISE_POLL="${SUPERVISE_POLL:-60}"              # seconds between supervisor checks
MAX_FAILURES="${MAX_FAILURES:-3}"                   # non-zero exits in a row before giving up
NUM_SLICES="${NUM_SLICES:-1}"                       # slices of ACCELERATOR in the queued resource
# What `clean` frees on every worker: processes holding these files (patterns, expanded on the
# worker; v5e / v6e: /dev/vfio, v4 / v5p: /dev/accel*), and libtpu's lock file.
TPU_DEVICES="${TPU_DEVICES:-/dev/vfio/* /dev/accel*}"
LIBTPU_LOCK="${LIBTPU_LOCK:-/tmp/libtpu_lockfile}"
EXIT_FINAL=2                                        # jaxmilab.main: NaN / Inf loss or config error
DELETE_WHEN_DONE="${DELETE_WHEN_DONE:-1}"           # supervise: delete the slice at the end
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Paths on the workers (relative to the worker's home directory).
SRC=jaxmilab                 # the shipped tree
VENV=jaxmilab-venv           # Python >= PYTHON_VERSION virtual environment
LOG=jaxmilab_run.log         # training output
RC=jaxmilab_run.rc           # exit code of the training process, written when it ends
PID=jaxmilab_run.pid

log() { echo "$(date -u +%H:%M:%S) tpu_pod: $*"; }
gc() { gcloud "$@" --project="${PROJECT}" --zone="${ZONE}"; }
# The TPU VM nodes: TPU_NAME for one slice; TPU_NAME-0 ... TPU_NAME-<N-1> (--node-prefix) for N.
nodes() {
  if (( NUM_SLICES > 1 )); then
    local i; for ((i = 0; i < NUM_SLICES; i++)); do echo "${TPU_NAME}-${i}"; done
  else echo "${TPU_NAME}"; fi
}
# $1 on every worker of every slice at once; fails if it fails anywhere.
on_all() {
  local node pids=() rc=0 p
  for node in $(nodes); do
    gc compute tpus tpu-vm ssh "${node}" --worker=all --command="$1" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "${p}" || rc=1; done
  return "${rc}"
}
on_worker0() { gc compute tpus tpu-vm ssh "$(nodes | head -n 1)" --worker=0 --command="$1"; }
# The queued resource's state; "" when it does not exist, UNKNOWN when gcloud fails otherwise
# (a transient API error must never look like a deleted slice).
qr_state() {
  local out
  if out="$(gc compute tpus queued-resources describe "${QR_NAME}" --format='value(state.state)' 2>&1)"; then
    grep -E '^[A-Z_]+$' <<< "${out}" | tail -n 1
  elif grep -q NOT_FOUND <<< "${out}"; then
    echo ""
  else
    echo UNKNOWN
  fi
}

create() {
  local state
  state="$(qr_state)"
  while [[ "${state}" == UNKNOWN ]]; do
    log "cannot read the state of ${QR_NAME}; retrying."; sleep "${SUPERVISE_POLL}"; state="$(qr_state)"
  done
  case "${state}" in
    ACTIVE) log "slice ${TPU_NAME} is ACTIVE."; return 0 ;;
    WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING) log "queued resource is ${state}." ;;
    "") ;;
    *)  # SUSPENDING, SUSPENDED (preempted), FAILED, DELETING
      log "queued resource is ${state}: deleting it and queueing it again."
      gc compute tpus queued-resources delete "${QR_NAME}" --force --quiet || true
      state="" ;;
  esac
  if [[ -z "${state}" ]]; then
    local spot_flag=()
    [[ "${SPOT}" == "1" ]] && spot_flag=(--spot)
    local node_flags=(--node-id="${TPU_NAME}")
    (( NUM_SLICES > 1 )) && node_flags=(--node-count="${NUM_SLICES}" --node-prefix="${TPU_NAME}")
    gc compute tpus queued-resources create "${QR_NAME}" "${node_flags[@]}" \
      --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME}" "${spot_flag[@]}"
  fi
  while true; do
    state="$(qr_state)"
    case "${state}" in
      ACTIVE) break ;;
      FAILED|SUSPENDED) log "queued resource ${QR_NAME} is ${state} while waiting."; return 1 ;;
    esac
    log "waiting for ${QR_NAME}: ${state:-(not found)}"
    sleep "${SUPERVISE_POLL}"
  done
  log "slice ${TPU_NAME} is ACTIVE."
}

install() {
  # Only git-tracked files (their working-tree content): never .venv/, egg-info, workdirs.
  local stage
  stage="$(mktemp -d)"
  (cd "${REPO_DIR}" && git ls-files -z | while IFS= read -r -d '' f; do
     [[ -e "${f}" ]] && printf '%s\0' "${f}"; done) > "${stage}/files"
  (cd "${REPO_DIR}" && echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- || echo ' + local changes')") \
    > "${stage}/SOURCE_VERSION"
  tar -czf "${stage}/jaxmilab_src.tar.gz" -C "${REPO_DIR}" --null -T "${stage}/files" \
    -C "${stage}" SOURCE_VERSION
  local node
  for node in $(nodes); do
    gc compute tpus tpu-vm scp "${stage}/jaxmilab_src.tar.gz" "${node}:" --worker=all
  done
  rm -rf "${stage}"
  local mount=""
  if [[ "${DATA}" == /mnt/gcs/* ]]; then
    mount="if ! mountpoint -q /mnt/gcs; then
      command -v gcsfuse >/dev/null || {
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }
      sudo mkdir -p /mnt/gcs && sudo chown \$USER /mnt/gcs
      # Metadata caches without expiry or size limit (the build is read-only once written; remount
      # after rebuilding it): every open of a shard would otherwise stat it on GCS again.
      gcsfuse -o ro --implicit-dirs --metadata-cache-ttl-secs=-1 --stat-cache-max-size-mb=-1 \\
        --type-cache-max-size-mb=-1 ${BUCKET:?set BUCKET for DATA=/mnt/gcs/...} /mnt/gcs
    fi"
  fi
  on_all "set -euo pipefail
    rm -rf ~/${SRC} && mkdir -p ~/${SRC} && tar -xzf ~/jaxmilab_src.tar.gz -C ~/${SRC}
    if ! command -v uv >/dev/null; then
      [[ -x ~/.local/bin/uv ]] || curl -LsSf https://astral.sh/uv/install.sh | sh
      export PATH=\$HOME/.local/bin:\$PATH
    fi
    # uv fetches a standalone CPython when the image's python3 is older than ${PYTHON_VERSION}.
    [[ -x ~/${VENV}/bin/python ]] || uv venv --python ${PYTHON_VERSION} ~/${VENV}
    uv pip install --python ~/${VENV}/bin/python -c ~/${SRC}/constraints.txt -e "\$HOME/${SRC}[tpu]"
    ${mount}
    ~/${VENV}/bin/python -c 'import sys, jax; assert sys.version_info >= (3, 11), sys.version; print(\"jaxmilab worker: python\", sys.version.split()[0], \"jax\", jax.__version__)'"
}

clean() {
  # The previous run's process group (setsid below), then anything still holding the TPU, then
  # libtpu's lock file: a restart on a VM that kept them would fail to open the TPU.
  on_all "S=''; if [[ \$(id -u) != 0 ]] && sudo -n true 2>/dev/null; then S='sudo -n'; fi
    if [[ -f ~/${PID} ]]; then \$S kill -9 -- -\$(cat ~/${PID}) 2>/dev/null || true; fi
    set -f; pats=(${TPU_DEVICES}); set +f; held=''
    for fd in /proc/[0-9]*/fd/*; do
      t=\$(readlink \"\$fd\" 2>/dev/null) || continue
      for pat in \"\${pats[@]}\"; do
        if [[ \"\$t\" == \$pat ]]; then p=\${fd#/proc/}; held=\"\$held \${p%%/*}\"; fi
      done
    done 2>/dev/null
    for p in \$(echo \$held | tr ' ' '\\n' | sort -u); do
      echo \"clean: killing process \$p, which holds the TPU\"; \$S kill -9 \$p 2>/dev/null || true
    done
    for i in \$(seq 50); do
      alive=''; for p in \$held; do kill -0 \$p 2>/dev/null && alive=1; done
      [[ -z \$alive ]] && break; sleep 0.1
    done
    \$S rm -f ${LIBTPU_LOCK}; rm -f ~/${RC} ~/${PID}; echo \"clean on \$(hostname)\""
}

run() {
  clean
  # The same command on every worker. --distributed: jax.distributed.initialize() reads the
  # slice's hosts from the TPU VM metadata; re-running resumes from WORKDIR/checkpoints.
  local data_flag="" cmd
  [[ -n "${DATA}" ]] && data_flag="--config.data.path=$(printf %q "${DATA}")"
  cmd="~/${VENV}/bin/python -m jaxmilab.main --distributed --config=$(printf %q "${CONFIG}")"
  cmd+=" --workdir=$(printf %q "${WORKDIR}") ${data_flag} ${EXTRA_FLAGS}"
  # (nohup's output goes to the log: ssh returns once the command has started)
  # ulimit: every host opens one reader per ArrayRecord shard it reads (thousands for UIR-2.5M);
  # the soft limit of open files (often 1024) is raised to the hard one.
  on_all "set -e; cd ~/${SRC}; rm -f ~/${RC}
    ulimit -n \$(ulimit -Hn) 2>/dev/null || true
    setsid nohup bash -c '${cmd//\'/\'\\\'\'}; echo \$? > ~/${RC}' > ~/${LOG} 2>&1 < /dev/null &
    echo \$! > ~/${PID}; echo \"started on \$(hostname)\""
  log "started ${CONFIG} in ${WORKDIR}; logs: $0 logs"
}

# Files of the workdir: gs:// through gcloud storage, a shared local path through worker 0.
workdir_cat() {
  if [[ "${WORKDIR}" == gs://* ]]; then gcloud storage cat "${WORKDIR}/$1" 2>/dev/null
  else on_worker0 "cat $(printf %q "${WORKDIR}/$1") 2>/dev/null"; fi
}
final_checkpoint_exists() {
  local total
  total="$(workdir_cat config.json | python3 -c 'import json, sys; print(json.load(sys.stdin)["total_steps"])' 2>/dev/null)" || return 1
  [[ -n "${total}" ]] || return 1
  if [[ "${WORKDIR}" == gs://* ]]; then  # orbax marks finished checkpoints on GCS with this file
    gcloud storage ls "${WORKDIR}/checkpoints/${total}/commit_success.txt" >/dev/null 2>&1
  else  # local file systems: orbax renames the finished temporary folder to <step>
    on_worker0 "test -d $(printf %q "${WORKDIR}/checkpoints/${total}")" >/dev/null 2>&1
  fi
}
# Every worker's status (running | exited <rc> | missing: no training process, a fresh VM),
# summed up: "exited 2" if any worker stopped for good, else "exited <rc>" for another failure,
# else missing, else running, else (all ended with 0) "exited 0"; unknown if ssh failed.
training_status() {
  local out
  out="$(on_all "if [[ -f ~/${RC} ]]; then echo jaxmilab-status exited \$(cat ~/${RC});
    elif [[ -f ~/${PID} ]] && kill -0 \$(cat ~/${PID}) 2>/dev/null; then echo jaxmilab-status running;
    else echo jaxmilab-status missing; fi" 2>/dev/null)" || { echo unknown; return; }
  out="$(grep '^jaxmilab-status ' <<< "${out}" | cut -d' ' -f2-)"
  if [[ -z "${out}" ]]; then echo unknown
  elif grep -qx "exited ${EXIT_FINAL}" <<< "${out}"; then echo "exited ${EXIT_FINAL}"
  elif grep -v -x 'exited 0' <<< "${out}" | grep -q '^exited'; then
    grep -v -x 'exited 0' <<< "${out}" | grep -m1 '^exited'
  elif grep -qx missing <<< "${out}"; then echo missing
  elif grep -qx running <<< "${out}"; then echo running
  else echo "exited 0"; fi
}

supervise() {
  local failures=0 state status
  while true; do
    state="$(qr_state)"
    case "${state}" in
      ACTIVE)
        status="$(training_status)"
        case "${status}" in
          running|unknown) ;;
          missing) log "no training process on the slice: installing and starting it."
                   install && run ;;
          "exited 0")
            if final_checkpoint_exists; then
              log "training finished (final checkpoint in ${WORKDIR})."
              [[ "${DELETE_WHEN_DONE}" == "1" ]] && delete
              return 0
            fi
            log "training stopped before the end (SIGTERM / maintenance): starting it again."
            failures=0; run ;;
          "exited ${EXIT_FINAL}")
            log "training stopped with exit code ${EXIT_FINAL} (a NaN / Inf loss or a config mistake):"
            log "it would recur at the same step, so it is not retried; the slice is kept: $0 delete."
            on_worker0 "tail -n 20 ~/${LOG}" || true
            return 1 ;;
          *) failures=$((failures + 1))
             log "training ${status} (${failures}/${MAX_FAILURES}); last lines of worker 0's log:"
             on_worker0 "tail -n 20 ~/${LOG}" || true
             if (( failures >= MAX_FAILURES )); then
               log "giving up after ${failures} failures in a row; the slice is kept: $0 delete."
               return 1
             fi
             run ;;
        esac ;;
      WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING) log "queued resource is ${state}." ;;
      UNKNOWN) log "cannot read the state of ${QR_NAME}; retrying." ;;
      *) log "queued resource is ${state:-gone} (preempted): re-creating the slice and resuming."
         create && install && run || log "recovery failed; retrying."
         ;;
    esac
    sleep "${SUPERVISE_POLL}"
  done
}

status() {
  echo "queued resource: $(qr_state)"
  workdir_cat metrics.jsonl | grep '"split": "train"' | tail -n 1 || true
}
logs() { on_worker0 "tail -n 50 ~/${LOG}"; }
delete() { gc compute tpus queued-resources delete "${QR_NAME}" --force --quiet; }

case "${1:-all}" in
  create) create ;;
  install) install ;;
  clean) clean ;;
  run) run ;;
  supervise) supervise ;;
  status) status ;;
  logs) logs ;;
  delete) delete ;;
  all) create; install; run; supervise ;;
  *) echo "usage: $0 [create|install|clean|run|supervise|status|logs|delete|all]"; exit 2 ;;
esac
