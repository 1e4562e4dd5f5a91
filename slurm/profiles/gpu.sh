# shellcheck shell=bash
# GPU profile (the default): one GPU per run; multinode runs one process per GPU of every node.
# Chosen with PROFILE=gpu (or no PROFILE) when a template submits itself; sourced again inside the job.
# Adjust per submission with sbatch options before the experiment (they win over these):
#   slurm/single.sbatch --partition=a100 --gres=gpu:a100:1 ood
PROFILE_SBATCH=(--gres=gpu:1 --cpus-per-task=8 --mem=64G)                          # single, array: per task
PROFILE_MULTINODE_SBATCH=(--ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8 --mem=0)  # multinode: per node
