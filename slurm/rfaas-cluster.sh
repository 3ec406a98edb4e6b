#!/bin/bash
# rfaas-cluster.sh: start an rfaas cluster as a Slurm job.
#
#   sbatch slurm/rfaas-cluster.sh                 # single allocation (this file's #SBATCH lines)
#   sbatch slurm/rfaas-cluster-hetjob.sh          # heterogeneous job: RM and EMs apart
#
# Layouts (chosen by how the job was submitted; nothing to switch in this file):
#   - single allocation (this file's #SBATCH lines): the resource manager (RM) runs on the
#     first node of the allocation, and one executor manager (EM) runs on every node,
#     the first one included.
#   - heterogeneous job (slurm/rfaas-cluster-hetjob.sh, which runs this file): component 0 holds
#     the RM (its first node), component 1 the nodes whose cores are rented out, one EM each.
#     A hetjob needs at least 2 nodes (one per component).
#
# What it does: creates the run directory (mode 0700) and a fresh cluster secret in it
# (mode 0600; the secret is never on a command line or in a log), starts the RM with srun,
# waits for its ready file, starts one EM per node with srun (each registers with the RM),
# waits until the RM reports every EM registered, then writes RUN_DIR/cluster.json (RM address,
# provider, secret file path) for client jobs, and waits. On SIGTERM (scancel, or the
# --signal below before the time limit) it removes cluster.json, stops the EMs (they stop their
# executors and deregister), then the RM, and exits: nothing is left on any node.
#
# Environment (all optional; sbatch passes the submitting shell's environment to the job):
#   RFAAS_HOME           the rfaas checkout (default: the directory sbatch was run from)
#   RFAAS_BIN_DIR        where the `rfaas` binary is (default: $RFAAS_HOME/target/release)
#   RFAAS_RUN_DIR        run directory, on a file system every node sees
#                        (default: $SLURM_SUBMIT_DIR/rfaas-run)
#   RFAAS_PROVIDER       fabric provider of the executors: tcp (default), verbs, ofi (libfabric
#                        provider from RFAAS_OFI_PROVIDER / FI_PROVIDER, exported to every node), or shm (only
#                        when every node is on one host, e.g. virtual nodes)
#   RFAAS_EM_CORES       cpulist every EM rents out (default: the cpuset Slurm gave the EM)
#   RFAAS_EM_MEMORY      memory every EM rents out, e.g. 32GiB (default: the node's MemTotal)
#   RFAAS_EM_CONFIG      TOML file passed to every EM with --config (flags set here win)
#   RFAAS_RM_CONFIG      TOML file passed to the RM with --config (TTLs, heartbeat timeout)
#   RFAAS_NODE_ADDR_<N>  address the daemons on node N bind to and announce (N = the Slurm node
#                        name with every character outside [A-Za-z0-9_] replaced by _);
#                        default: the node's NodeAddr in `scontrol show node`
#   RFAAS_START_TIMEOUT  seconds to wait for the RM and every EM to be up (default 60)
#   RFAAS_STOP_TIMEOUT   seconds the EMs, then the RM, get to stop before srun is killed
#                        (default 20)
#   RFAAS_RM_RESTARTS    times a crashed RM is restarted (on its first address) before the
#                        job gives up (default 5)
#   RFAAS_EM_RESTARTS    times each crashed EM is restarted (on its first address) before its
#                        node is given up (default 5)
#   RUST_LOG             log level of the daemons (default info)
#
# Files in RUN_DIR (logs under RUN_DIR/logs, per-node EM run directories under RUN_DIR/nodes):
#   secret  node-secret  cluster.json  job  rm.json (RM ready file)  rm-state  nodes/<node>/em.json
#
# Edit the resources below. Slurm's own options on the sbatch command line override them.
#SBATCH --job-name=rfaas-cluster
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
# The EMs rent out whole nodes: no other job should get cores there.
#SBATCH --exclusive
#SBATCH --time=01:00:00
# SIGTERM to this script 60 s before the time limit, so that it stops everything cleanly.
#SBATCH --signal=B:TERM@60
#SBATCH --output=rfaas-cluster-%j.out

set -euo pipefail

# Slurm runs a copy of this script from its spool directory: the shared part (log, die, the
# directories) comes from the checkout (RFAAS_HOME, default: the directory sbatch was run from).
JOB_LABEL=rfaas-cluster
common=${RFAAS_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/job-common.sh
[[ -r $common ]] || { echo "$JOB_LABEL: no $common: submit from the checkout or set RFAAS_HOME" >&2 && exit 1; }
# shellcheck source=slurm/job-common.sh
source "$common"

RFAAS=$BIN_DIR/rfaas
PROVIDER=${RFAAS_PROVIDER:-tcp}
START_TIMEOUT=${RFAAS_START_TIMEOUT:-60}
STOP_TIMEOUT=${RFAAS_STOP_TIMEOUT:-20}
RM_RESTARTS=${RFAAS_RM_RESTARTS:-5}
[[ $RM_RESTARTS =~ ^[0-9]+$ ]] || die "RFAAS_RM_RESTARTS must be a number, not '$RM_RESTARTS'"
EM_RESTARTS=${RFAAS_EM_RESTARTS:-5}
[[ $EM_RESTARTS =~ ^[0-9]+$ ]] || die "RFAAS_EM_RESTARTS must be a number, not '$EM_RESTARTS'"
export RUST_LOG=${RUST_LOG:-info}

[[ -x $RFAAS ]] || die "$RFAAS not found: build it (cargo build --release) or set RFAAS_BIN_DIR"
case $PROVIDER in shm | tcp | verbs | ofi) ;; *) die "RFAAS_PROVIDER=$PROVIDER: use tcp, verbs, ofi or shm" ;; esac

# Everything created from here on (run directory, secret, cluster.json) is private to the user.
umask 077
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/nodes"
RUN_DIR=$(cd "$RUN_DIR" && pwd -P) # absolute: EMs on other nodes and client jobs read it
CLUSTER_JSON=$RUN_DIR/cluster.json
SECRET_FILE=$RUN_DIR/secret
NODE_SECRET_FILE=$RUN_DIR/node-secret
RM_READY=$RUN_DIR/rm.json

# One cluster per run directory: refuse to take over one that a running job still serves.
if [[ -f $RUN_DIR/job ]]; then
	other=$(<"$RUN_DIR/job")
	if [[ $other != "$SLURM_JOB_ID" ]] && [[ -n $(squeue -h -j "$other" -t RUNNING -o %i 2>/dev/null) ]]; then
		die "$RUN_DIR is in use by running job $other: cancel it or set RFAAS_RUN_DIR"
	fi
fi
printf '%s\n' "$SLURM_JOB_ID" >"$RUN_DIR/job"
# Leftovers of an earlier cluster would be read as this one's.
# The resource manager's state is a snapshot and its log segments (rm-state.log.N); rm-state.json*
# is the name an older rfaas used.
rm -f "$CLUSTER_JSON" "$RM_READY" "$RUN_DIR"/rm-state "$RUN_DIR"/rm-state.log.* \
	"$RUN_DIR"/rm-state.json "$RUN_DIR"/rm-state.json.log.* "$RUN_DIR"/nodes/*/em.json

# A fresh secret per cluster: 32 random bytes as hex, written by builtins and od only, never
# shown. Written to a temporary file and renamed, so no reader ever sees a partial secret.
# The node credential (what the RM and EMs hold, clients never read it) is made the same way.
new_secret() {
	(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$1.tmp")
	chmod 600 "$1.tmp"
	mv -f "$1.tmp" "$1"
}
new_secret "$SECRET_FILE"
new_secret "$NODE_SECRET_FILE"

# Which nodes do what. In a hetjob, SLURM_JOB_NODELIST is component 0's only.
if [[ -n ${SLURM_HET_SIZE:-} ]]; then
	((SLURM_HET_SIZE >= 2)) || die "a heterogeneous job needs 2 components (RM, EMs)"
	LAYOUT=hetjob
	mapfile -t RM_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_0")
	mapfile -t EM_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1")
	RM_GROUP=(--het-group=0)
	EM_GROUP=(--het-group=1)
else
	LAYOUT=single
	mapfile -t RM_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
	EM_NODES=("${RM_NODES[@]}")
	RM_GROUP=()
	EM_GROUP=()
fi
RM_NODE=${RM_NODES[0]}
NUM_EMS=${#EM_NODES[@]}
((NUM_EMS > 0)) || die "no node for the executor managers"

# The address each node's daemons bind to and announce: what Slurm itself uses to reach the
# node (NodeAddr), unless RFAAS_NODE_ADDR_<node> says otherwise. Looked up once here, with one
# scontrol call, rather than by every task.
NODE_ADDRS=$RUN_DIR/node-addrs
scontrol show node -o "$(scontrol show hostlist "$(printf '%s\n' "$RM_NODE" "${EM_NODES[@]}" | sort -u | paste -sd, -)")" |
	sed -n 's/^NodeName=\([^ ]*\) .*NodeAddr=\([^ ]*\).*/\1 \2/p' >"$NODE_ADDRS.tmp"
while read -r node addr; do
	var=RFAAS_NODE_ADDR_${node//[^A-Za-z0-9_]/_}
	printf '%s %s\n' "$node" "${!var:-$addr}"
done <"$NODE_ADDRS.tmp" >"$NODE_ADDRS"
rm -f "$NODE_ADDRS.tmp"
node_addr() { awk -v n="$1" '$1 == n { print $2; exit }' "$NODE_ADDRS"; }
RM_HOST=$(node_addr "$RM_NODE")
[[ -n $RM_HOST ]] || die "no address for node $RM_NODE (scontrol show node $RM_NODE)"

log "layout $LAYOUT; resource manager on $RM_NODE ($RM_HOST), $NUM_EMS executor manager(s) on" \
	"${EM_NODES[*]}; provider $PROVIDER; run directory $RUN_DIR; binaries $BIN_DIR"

RM_PID=
EM_PID=
STOPPING=0

# Stops a step: SIGTERM to its tasks through Slurm (scancel --signal on the step, which only
# signals; SIGTERM to srun itself would make srun kill the tasks at once), then waits up to
# STOP_TIMEOUT seconds for srun to see them exit, then kills srun. A daemon stopped by SIGTERM
# stops its children (the executors) itself: that is the clean path. Whatever a step leaves
# behind, Slurm kills when the job ends.
# The steps named $1. A hetjob's components have job ids of their own (squeue's %A), and each
# step is listed under its component's id.
step_ids() {
	local jobs
	jobs=$(squeue -h -j "$SLURM_JOB_ID" -o %A 2>/dev/null | paste -sd, -)
	squeue -h -s -j "${jobs:-$SLURM_JOB_ID}" -o '%i %j' 2>/dev/null | awk -v n="$1" '$2 == n { print $1 }'
}
stop_step() {
	local pid=$1 name=$2 what=$3 waited=0 step
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	log "stopping $what"
	for step in $(step_ids "$name"); do
		scancel --quiet --signal=TERM "$step" 2>/dev/null || true
	done
	while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT * 10)); do
		sleep 0.1
		waited=$((waited + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$what still running after ${STOP_TIMEOUT}s: killing them"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

shutdown() {
	local code=${1:-0}
	((STOPPING)) && return 0
	STOPPING=1
	trap '' TERM INT
	# Clients must not find a cluster that is going away.
	rm -f "$CLUSTER_JSON"
	# EMs first: they stop their executors and deregister while the RM still answers.
	stop_step "$EM_PID" rfaas-em "the executor managers"
	stop_step "$RM_PID" rfaas-rm "the resource manager"
	log "stopped"
	exit "$code"
}
trap 'log "SIGTERM received"; shutdown 0' TERM
trap 'log "SIGINT received"; shutdown 0' INT
trap 'shutdown $?' EXIT

# The resource manager: one task on the RM node. --overlap: it shares that node's cores with
# the EM step (it is idle most of the time), which would otherwise wait for them. --mpi=none:
# the daemons are no MPI programs (a site's MpiDefault=pmix would set up PMIx for nothing).
RM_ARGS=(resource-manager --listen "$RM_HOST:0" --secret-file "$SECRET_FILE"
	--node-secret-file "$NODE_SECRET_FILE"
	--state-file "$RUN_DIR/rm-state" --ready-file "$RM_READY")
[[ -n ${RFAAS_RM_CONFIG:-} ]] && RM_ARGS+=(--config "$RFAAS_RM_CONFIG")
# Started again (same state file, same address) if it crashes: see the end of this script.
start_rm() {
	srun "${RM_GROUP[@]}" --overlap --mpi=none --nodes=1 --ntasks=1 --nodelist="$RM_NODE" \
		--job-name=rfaas-rm --kill-on-bad-exit=1 \
		--open-mode=append --output="$RUN_DIR/logs/rm.log" \
		"$RFAAS" "${RM_ARGS[@]}" &
	RM_PID=$!
}
start_rm

# Waits until `check` succeeds, or fails after START_TIMEOUT seconds or when srun `pid` ended.
START=$SECONDS
START_US=${EPOCHREALTIME/[.,]/}
wait_until() {
	local what=$1 pid=$2
	shift 2
	until "$@"; do
		kill -0 "$pid" 2>/dev/null || die "$what: its srun exited (see $RUN_DIR/logs)"
		((SECONDS - START < START_TIMEOUT)) || die "$what: not ready after ${START_TIMEOUT}s (see $RUN_DIR/logs)"
		sleep 0.05
	done
}

rm_ready() { [[ -s $RM_READY ]]; }
wait_until "resource manager" "$RM_PID" rm_ready
RM_ADDR=$(sed -n 's/.*"http": *"\([^"]*\)".*/\1/p' "$RM_READY" | head -n1)
[[ -n $RM_ADDR ]] || die "cannot read the resource manager's address from $RM_READY"
log "resource manager up at http://$RM_ADDR"

# One executor manager per node. The task looks up its own node name (SLURMD_NODENAME tells
# virtual nodes on one host apart, where `hostname` would not) and address, and runs the EM;
# SIGTERM (from srun or Slurm) is passed on to it. The EM starts on port 0; the port it binds
# is then its address for good: an EM that exits on its own (a crash, kill -9) is started
# again on that address, at most RFAAS_EM_RESTARTS times, registers again with the RM, and
# clients and leases reach it where they did.
em_task() {
	set -euo pipefail
	local node=${SLURMD_NODENAME:-$(hostname -s)}
	local addr
	addr=$(awk -v n="$node" '$1 == n { print $2; exit }' "$RFAAS_X_RUN_DIR/node-addrs")
	[[ -n $addr ]] || {
		echo "no address for node $node in $RFAAS_X_RUN_DIR/node-addrs" >&2
		exit 1
	}
	local dir=$RFAAS_X_RUN_DIR/nodes/$node
	mkdir -p "$dir"
	# One log per node, named after it (srun's %N is the host name, the same for virtual nodes).
	exec >>"$RFAAS_X_RUN_DIR/logs/em-$node.log" 2>&1
	local args=(executor-manager --node "$node" --fabric-host "$addr"
		--provider "$RFAAS_X_PROVIDER" --secret-file "$RFAAS_X_RUN_DIR/secret"
		--node-secret-file "$RFAAS_X_RUN_DIR/node-secret"
		--run-dir "$dir" --ready-file "$dir/em.json" --resource-manager "$RFAAS_X_RM_ADDR")
	[[ -n ${RFAAS_EM_CORES:-} ]] && args+=(--cores "$RFAAS_EM_CORES")
	[[ -n ${RFAAS_EM_MEMORY:-} ]] && args+=(--memory "$RFAAS_EM_MEMORY")
	[[ -n ${RFAAS_EM_CONFIG:-} ]] && args+=(--config "$RFAAS_EM_CONFIG")
	local listen=$addr:0 restarts=0 stopping=0 pid= code port
	trap 'stopping=1; [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true' TERM INT
	while :; do
		rm -f "$dir/em.json"
		"$RFAAS_X_BIN" "${args[@]}" --listen "$listen" &
		pid=$!
		code=0
		# wait returns early when a trapped signal arrives: wait until the EM itself is gone.
		while kill -0 "$pid" 2>/dev/null; do
			wait "$pid" && code=0 || code=$?
		done
		((stopping)) && exit "$code"
		if [[ $listen == *:0 ]]; then
			port=$(sed -n 's/.*"http": *"[^"]*:\([0-9][0-9]*\)".*/\1/p' "$dir/em.json" 2>/dev/null | head -n1 || true)
			[[ -n $port ]] && listen=$addr:$port
		fi
		if ((restarts >= RFAAS_X_EM_RESTARTS)); then
			echo "rfaas-cluster: executor manager on $node exited (status $code) after $restarts restart(s): giving up" >&2
			exit "$code"
		fi
		restarts=$((restarts + 1))
		echo "rfaas-cluster: executor manager on $node exited (status $code): starting it again on $listen ($restarts of at most $RFAAS_X_EM_RESTARTS)" >&2
	done
}
export RFAAS_X_RUN_DIR=$RUN_DIR RFAAS_X_PROVIDER=$PROVIDER RFAAS_X_RM_ADDR=$RM_ADDR RFAAS_X_BIN=$RFAAS \
	RFAAS_X_EM_RESTARTS=$EM_RESTARTS
# --overlap: in the single layout the first node also runs the RM step.
# --kill-on-bad-exit=0: one EM failing does not take the others down (this script notices).
srun "${EM_GROUP[@]}" --overlap --mpi=none --nodes="$NUM_EMS" --ntasks="$NUM_EMS" --ntasks-per-node=1 \
	--nodelist="$(printf '%s,' "${EM_NODES[@]}" | sed 's/,$//')" \
	--job-name=rfaas-em --kill-on-bad-exit=0 \
	bash -c "$(declare -f em_task); em_task" &
EM_PID=$!

# Asks the RM how many executor managers are alive: prints nodes_alive from GET /v1/metrics.
# Plain bash over /dev/tcp (no curl needed on the nodes); the secret goes from its file into the
# request by builtins only, never through a command line. Run in a child under `timeout` (below)
# so that it cannot hang.
metrics_nodes_alive() {
	set -eu
	local addr=$1 secret_file=$2 host port secret reply
	host=${addr%:*} port=${addr##*:}
	host=${host#[} host=${host%]}
	# The file has no final newline: read then fails, having read the secret.
	IFS= read -r secret <"$secret_file" || [[ -n $secret ]]
	exec 3<>"/dev/tcp/$host/$port"
	printf 'GET /v1/metrics HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' \
		"$addr" "$secret" >&3
	unset secret
	IFS= read -r -d '' -u 3 reply || true
	[[ $reply == "HTTP/1.1 200"* ]] || return 1
	[[ $reply =~ \"nodes_alive\":\ *([0-9]+) ]] || return 1
	echo "${BASH_REMATCH[1]}"
}
rm_nodes_alive() {
	timeout 5 bash -c "$(declare -f metrics_nodes_alive); metrics_nodes_alive \"\$@\"" \
		metrics_nodes_alive "$RM_ADDR" "$SECRET_FILE"
}
all_registered() {
	local alive
	alive=$(rm_nodes_alive 2>/dev/null) || return 1
	((alive >= NUM_EMS))
}
wait_until "executor managers" "$EM_PID" all_registered
kill -0 "$RM_PID" 2>/dev/null || die "the resource manager exited (see $RUN_DIR/logs/rm.log)"

# Written to a temporary file and renamed: a client polling for cluster.json never reads half
# of it. No executor managers listed: a lease names the ones that hold its cores.
json_string() {
	local s=${1//\\/\\\\}
	printf '"%s"' "${s//\"/\\\"}"
}
cat >"$CLUSTER_JSON.tmp" <<EOF
{
  "version": 1,
  "provider": "$PROVIDER",
  "secret_file": $(json_string "$SECRET_FILE"),
  "resource_manager": "$RM_ADDR",
  "executor_managers": []
}
EOF
mv -f "$CLUSTER_JSON.tmp" "$CLUSTER_JSON"
log "cluster ready after $(((${EPOCHREALTIME/[.,]/} - START_US) / 1000)) ms: $NUM_EMS executor manager(s) registered;" \
	"clients use --cluster $CLUSTER_JSON"

# Serve until SIGTERM (the trap stops everything). A resource manager that exits on its own
# is started again on the address clients and executor managers know (its port is fixed from
# now on), with the same state file, at most RM_RESTARTS times; the executor managers' step
# exiting ends the cluster: clients would find it half gone.
RM_PORT=${RM_ADDR##*:}
for i in "${!RM_ARGS[@]}"; do
	[[ ${RM_ARGS[i]} == --listen ]] && RM_ARGS[i + 1]="$RM_HOST:$RM_PORT"
done
restarts=0
while :; do
	set +e
	wait -n "$RM_PID" "$EM_PID"
	code=$?
	set -e
	((STOPPING)) && exit 0
	if ! kill -0 "$EM_PID" 2>/dev/null; then
		log "error: the executor managers' srun exited (status $code; see $RUN_DIR/logs): stopping the cluster" >&2
		shutdown 1
	fi
	kill -0 "$RM_PID" 2>/dev/null && continue
	if ((restarts >= RM_RESTARTS)); then
		log "error: the resource manager exited (status $code; see $RUN_DIR/logs/rm.log) after $restarts restart(s): stopping the cluster" >&2
		shutdown 1
	fi
	restarts=$((restarts + 1))
	log "the resource manager exited (status $code): restarting it on $RM_ADDR ($restarts of at most $RM_RESTARTS)" >&2
	rm -f "$RM_READY"
	start_rm
	START=$SECONDS
	wait_until "resource manager (restart $restarts)" "$RM_PID" rm_ready
	log "resource manager back at http://$RM_ADDR"
done
