#!/bin/bash
# rfaas-cluster-hetjob.sh: the heterogeneous-job layout of slurm/rfaas-cluster.sh.
#
#   sbatch slurm/rfaas-cluster-hetjob.sh
#
# Component 0 holds the resource manager (one task on one node, which rents nothing out);
# component 1 holds the nodes whose cores are rented out, one executor manager each. Each
# component can be sized and placed on its own (a different partition, a service node for the
# resource manager). A heterogeneous job needs at least 2 nodes; where that does not fit, use
# the single-allocation layout, slurm/rfaas-cluster.sh.
#
# This file only holds the resources: the work is done by slurm/rfaas-cluster.sh, which
# recognises a heterogeneous job by SLURM_HET_SIZE. Slurm runs a copy of the batch script from
# its spool directory, so the checkout is found through RFAAS_HOME (default: the directory sbatch
# was run from). Every environment variable of rfaas-cluster.sh applies.
#
# Edit the resources below (the lines after "#SBATCH hetjob" are component 1's).
#SBATCH --job-name=rfaas-cluster
#SBATCH --time=01:00:00
#SBATCH --signal=B:TERM@60
#SBATCH --output=rfaas-cluster-%j.out
#SBATCH --nodes=1 --ntasks=1
#SBATCH hetjob
#SBATCH --nodes=2 --ntasks-per-node=1
#SBATCH --exclusive

set -euo pipefail

script=${RFAAS_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/rfaas-cluster.sh
if [[ ! -r $script ]]; then
	echo "rfaas-cluster-hetjob: $script not found: submit from the rfaas checkout or set RFAAS_HOME" >&2
	exit 1
fi
# exec: the same process, so the signal of --signal=B:... and scancel's reach the cluster script.
exec bash "$script" "$@"
