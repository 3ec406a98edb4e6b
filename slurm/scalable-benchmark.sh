#!/bin/bash
# scalable-benchmark.sh: the client job. Every MPI rank invokes functions on the rfaas cluster
# that slurm/rfaas-cluster.sh started; rank 0 writes all ranks' measurements into one CSV.
#
#   sbatch slurm/scalable-benchmark.sh
#   RFAAS_BENCH_MODE=throughput RFAAS_BENCH_SIZES=64,65536 sbatch slurm/scalable-benchmark.sh
#   sbatch --dependency=after:<cluster job id> slurm/scalable-benchmark.sh   # submit both at once
#
# It waits (RFAAS_WAIT_TIMEOUT) for RUN_DIR/cluster.json, which the cluster job writes once the
# resource manager is up and every executor manager registered, then runs
#
#   srun --mpi=pmix scalable_benchmark --cluster RUN_DIR/cluster.json --function F --sizes S \
#        --repetitions R --mode M --output CSV
#
# (or `mpirun` inside the allocation), and exits with the benchmark's status. The CSV has the
# columns benchmark,mode,provider,payload_bytes,rank,world_size,node,worker,repetition,latency_ns,
# one row per rank, size and repetition, and a JSON metadata file beside it.
#
# Environment (all optional):
#   RFAAS_HOME              the rfaas checkout (default: the directory sbatch was run from)
#   RFAAS_BIN_DIR           where the binaries are (default: $RFAAS_HOME/target/release)
#   RFAAS_RUN_DIR           the cluster's run directory (default: $SLURM_SUBMIT_DIR/rfaas-run,
#                           the cluster script's default)
#   RFAAS_CLUSTER           the cluster file (default: $RFAAS_RUN_DIR/cluster.json)
#   RFAAS_BENCH_FUNCTION    function to invoke (default: empty)
#   RFAAS_BENCH_SIZES       payload sizes in bytes, comma separated (default: 64,4096)
#   RFAAS_BENCH_REPETITIONS measured invocations per size and rank (default: 1000)
#   RFAAS_BENCH_MODE        warm (default), throughput or cold; empty: no --mode flag
#   RFAAS_BENCH_OUTPUT      the CSV (default: $RFAAS_RUN_DIR/scalable-<job id>.csv)
#   RFAAS_BENCH_BINARY      benchmark binary name in RFAAS_BIN_DIR (default: scalable_benchmark)
#   RFAAS_BENCH_ARGS        more arguments for the benchmark, split on spaces (e.g. "--warmup 50")
#   RFAAS_BENCH_LAUNCHER    srun (default) or mpirun
#   RFAAS_MPI_TYPE          srun's --mpi plugin (default: pmix; Debian's OpenMPI needs pmix)
#   RFAAS_WAIT_TIMEOUT      seconds to wait for cluster.json (default 300)
#   OMPI_MCA_btl            default self,tcp (see below); other OMPI_* variables pass through
#
# Edit the resources below: one rank per task.
#SBATCH --job-name=rfaas-bench
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:30:00
#SBATCH --output=rfaas-bench-%j.out

set -euo pipefail

# Slurm runs a copy of this script from its spool directory: the shared part (log, die, the
# directories) comes from the checkout (RFAAS_HOME, default: the directory sbatch was run from).
JOB_LABEL=rfaas-bench
common=${RFAAS_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/job-common.sh
[[ -r $common ]] || { echo "$JOB_LABEL: no $common: submit from the checkout or set RFAAS_HOME" >&2 && exit 1; }
# shellcheck source=slurm/job-common.sh
source "$common"
CLUSTER=${RFAAS_CLUSTER:-$RUN_DIR/cluster.json}
FUNCTION=${RFAAS_BENCH_FUNCTION:-empty}
SIZES=${RFAAS_BENCH_SIZES:-64,4096}
REPETITIONS=${RFAAS_BENCH_REPETITIONS:-1000}
MODE=${RFAAS_BENCH_MODE-warm}
OUTPUT=${RFAAS_BENCH_OUTPUT:-$RUN_DIR/scalable-$SLURM_JOB_ID.csv}
BENCH=$BIN_DIR/${RFAAS_BENCH_BINARY:-scalable_benchmark}
LAUNCHER=${RFAAS_BENCH_LAUNCHER:-srun}
WAIT_TIMEOUT=${RFAAS_WAIT_TIMEOUT:-300}

[[ -x $BENCH ]] || die "$BENCH not found: build it (cargo build --release --features mpi) or set RFAAS_BIN_DIR"

# The cluster job may still be starting (e.g. both jobs submitted together).
start=$SECONDS
until [[ -s $CLUSTER ]]; do
	((SECONDS - start < WAIT_TIMEOUT)) || die "no $CLUSTER after ${WAIT_TIMEOUT}s: is the cluster job (slurm/rfaas-cluster.sh) running?"
	sleep 0.2
done
log "cluster file $CLUSTER (after $((SECONDS - start))s)"

ARGS=(--cluster "$CLUSTER" --function "$FUNCTION" --sizes "$SIZES"
	--repetitions "$REPETITIONS" --output "$OUTPUT")
[[ -n $MODE ]] && ARGS+=(--mode "$MODE")
if [[ -n ${RFAAS_BENCH_ARGS:-} ]]; then
	read -r -a extra <<<"$RFAAS_BENCH_ARGS"
	ARGS+=("${extra[@]}")
fi

# OpenMPI: with several ranks per node on virtual nodes (several slurmd on one host), the
# shared-memory transport between ranks misbehaves; TCP always works, and the benchmark's own
# MPI traffic (gathering results) is small. Set OMPI_MCA_btl yourself to use another.
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,tcp}
# Ranks may outnumber cores (the executors need cores too): waiting in MPI then yields.
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}

mkdir -p "$(dirname "$OUTPUT")"
log "${SLURM_NTASKS:-?} rank(s) on ${SLURM_JOB_NODELIST:-?}: $(basename "$BENCH") ${ARGS[*]}"
case $LAUNCHER in
srun)
	srun --mpi="${RFAAS_MPI_TYPE:-pmix}" --kill-on-bad-exit=1 "$BENCH" "${ARGS[@]}"
	;;
mpirun)
	# OpenMPI refuses root unless told; more ranks than cores needs oversubscription.
	if [[ $(id -u) == 0 ]]; then
		export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
	fi
	mpirun --oversubscribe "$BENCH" "${ARGS[@]}"
	;;
*) die "RFAAS_BENCH_LAUNCHER=$LAUNCHER: use srun or mpirun" ;;
esac
log "results in $OUTPUT"
