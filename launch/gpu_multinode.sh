#!/usr/bin/env bash
# MaskDCPT pre-training on SLURM GPU nodes: one process per GPU, jax.distributed from SLURM.
#
#   cd /path/to/jaxmilab   # sbatch records this folder as SLURM_SUBMIT_DIR
#   CONFIG=configs/maskdcpt.py:pod DATA=/shared/uir2p5m_build WORKDIR=/shared/runs/maskdcpt \
#     sbatch --nodes=4 launch/gpu_multinode.sh
#
# SLURM runs a copy of this script from its spool folder, so the repository is found through
# SLURM_SUBMIT_DIR (or REPO_DIR), never through the script's own path. `srun` starts
# SLURM_NTASKS = nodes x GPUs-per-node tasks; each sees one GPU (--gpus-per-task=1) and runs
# `python -m jaxmilab.main --distributed`, whose jax.distributed.initialize() reads
# SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_NODELIST and picks the first node as coordinator
# (JAX's SLURM cluster detection). The workdir must be on a shared file system.
#
# Time limit and preemption: --signal=TERM@300 makes SLURM send SIGTERM to every task 300 s
# before the time limit; the trainer saves a checkpoint and exits 0. This script then checks
# whether the final checkpoint exists; if not, it requeues the job (`scontrol requeue`), which
# resumes from the newest checkpoint in WORKDIR when it starts again (bit-for-bit, trainer.py).
# --requeue also lets SLURM requeue the job itself after a node failure or a preemption.
#SBATCH --job-name=maskdcpt
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:?submit with sbatch from the repository root, or set REPO_DIR}}"
CONFIG="${CONFIG:-configs/maskdcpt.py:pod}"
WORKDIR="${WORKDIR:-${HOME}/runs/maskdcpt_nafnet_uir2p5m}"   # shared file system
DATA="${DATA-/shared/uir2p5m_build}"                          # a build_uir folder; "" = none
VENV="${VENV:-${HOME}/venvs/jaxmilab}"   # python3.11 -m venv; pip install -c constraints.txt 'jax[cuda12]' -e .
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
REQUEUE="${REQUEUE:-1}"                  # requeue the job when it stopped before the last step
# GPU meshes: data-parallel inside a node is cheap (NVLink); keep FSDP inside the node too.
MESH_FLAGS="${MESH_FLAGS:---config.mesh.data=-1 --config.mesh.fsdp=${SLURM_NTASKS_PER_NODE:-8}}"

cd "${REPO_DIR}"
[[ -f jaxmilab/main.py ]] || { echo "gpu_multinode.sh: ${REPO_DIR} is not the jaxmilab repository (set REPO_DIR)." >&2; exit 2; }
# shellcheck disable=SC1091
source "${VENV}/bin/activate"
mkdir -p "${WORKDIR}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

data_flag=()
[[ -n "${DATA}" ]] && data_flag=(--config.data.path="${DATA}")
echo "$(date -u +%FT%TZ) job ${SLURM_JOB_ID:-?} start ${SLURM_RESTART_COUNT:-0}: ${CONFIG} -> ${WORKDIR}"
# SLURM's SIGTERM (--signal) reaches every task; the trainer saves a checkpoint and exits 0.
set +e
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 --cpu-bind=none \
  python -m jaxmilab.main --distributed --config="${CONFIG}" --workdir="${WORKDIR}" \
    "${data_flag[@]}" ${MESH_FLAGS} ${EXTRA_FLAGS}
rc=$?
set -e

total="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["total_steps"])' \
         "${WORKDIR}/config.json" 2>/dev/null || echo unknown)"
if [[ -d "${WORKDIR}/checkpoints/${total}" ]]; then
  echo "$(date -u +%FT%TZ) training finished: ${WORKDIR}/checkpoints/${total}"
  exit 0
fi
if [[ "${rc}" == 0 && "${REQUEUE}" == 1 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "$(date -u +%FT%TZ) stopped before step ${total} (SIGTERM): requeueing job ${SLURM_JOB_ID}."
  scontrol requeue "${SLURM_JOB_ID}"
  exit 0
fi
echo "$(date -u +%FT%TZ) srun exited with ${rc} before step ${total}; not requeued." >&2
exit "$(( rc == 0 ? 1 : rc ))"
