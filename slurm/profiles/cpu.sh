# shellcheck shell=bash
# CPU profile: no GPU asked for, a few cores and memory a CPU node has. JAX runs on the CPU.
# Chosen with PROFILE=cpu when a template submits itself; sourced again inside the job.
# Adjust per submission with sbatch options before the experiment (they win over these):
#   PROFILE=cpu slurm/single.sbatch --cpus-per-task=16 --mem=64G ood population_chunk=1
PROFILE_SBATCH=(--cpus-per-task=4 --mem=16G)                           # single.sbatch, array.sbatch: per task
PROFILE_MULTINODE_SBATCH=(--ntasks-per-node=2 --cpus-per-task=4 --mem=32G)  # multinode.sbatch: per node
export JAX_PLATFORMS=cpu
