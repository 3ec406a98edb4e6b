# Sourced by the Slurm batch scripts of rfaas (rfaas-cluster.sh, scalable-benchmark.sh) after
# they set JOB_LABEL: log and die (lines stamped with the time, the label and the job id), the
# check that this runs inside a Slurm job, and the directories every script uses:
#   RFAAS_HOME  the checkout (default: the directory sbatch was run from)
#   BIN_DIR     the binaries (RFAAS_BIN_DIR, default: RFAAS_HOME/target/release)
#   RUN_DIR     the cluster's run directory (RFAAS_RUN_DIR, default: the submit directory's
#               rfaas-run)

log() { printf '%s %s[%s]: %s\n' "$(date +%T.%3N)" "$JOB_LABEL" "${SLURM_JOB_ID:-?}" "$*"; }
die() {
	log "error: $*" >&2
	exit 1
}

[[ -n ${SLURM_JOB_ID:-} ]] || die "not inside a Slurm job: submit it with sbatch"

RFAAS_HOME=${RFAAS_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
BIN_DIR=${RFAAS_BIN_DIR:-$RFAAS_HOME/target/release}
RUN_DIR=${RFAAS_RUN_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/rfaas-run}
