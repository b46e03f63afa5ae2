#!/usr/bin/env bash
# MaskDCPT pre-training on SLURM GPU nodes: one process per GPU, jax.distributed from SLURM.
#
#   sbatch --nodes=4 launch/gpu_multinode.sh                        # 4 nodes x 8 GPUs
#   CONFIG=configs/maskdcpt.py:pod DATA=/shared/uir2p5m_build sbatch launch/gpu_multinode.sh
#
# `srun` starts SLURM_NTASKS = nodes x GPUs-per-node tasks; each sees one GPU
# (--gpus-per-task=1) and runs `python -m jaxmilab.main --distributed`, whose
# jax.distributed.initialize() reads SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_NODELIST and
# picks the first node as coordinator (JAX's SLURM cluster auto-detection). The workdir must
# be on a shared file system. SLURM sends SIGTERM 300 s before the time limit or a preemption
# (--signal); the trainer saves a checkpoint and exits 0; a requeued or re-submitted job resumes
# from the newest checkpoint in WORKDIR.
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

CONFIG="${CONFIG:-configs/maskdcpt.py:pod}"
WORKDIR="${WORKDIR:-${HOME}/runs/maskdcpt_nafnet_uir2p5m}"   # shared file system
DATA="${DATA:-/shared/uir2p5m_build}"                         # a build_uir folder
VENV="${VENV:-${HOME}/venvs/jaxmilab}"                        # pip install 'jax[cuda12]' -e .
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
# GPU meshes: data-parallel inside a node is cheap (NVLink); keep FSDP inside the node too.
MESH_FLAGS="${MESH_FLAGS:---config.mesh.data=-1 --config.mesh.fsdp=${SLURM_NTASKS_PER_NODE:-8}}"

source "${VENV}/bin/activate"
mkdir -p "${WORKDIR}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

cd "$(dirname "$(readlink -f "$0")")/.."
# srun forwards SLURM's SIGTERM reaches every task; the trainer saves a checkpoint and exits 0.
srun --kill-on-bad-exit=1 --cpu-bind=none \
  python -m jaxmilab.main --distributed --config="${CONFIG}" --workdir="${WORKDIR}" \
    --config.data.path="${DATA}" ${MESH_FLAGS} ${EXTRA_FLAGS}
