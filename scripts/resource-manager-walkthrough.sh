#!/usr/bin/env bash
# The resource manager's HTTP/JSON API, route by route, against a running cluster.
#
#   scripts/resource-manager-walkthrough.sh [CLUSTER_JSON]     (default: $RFAAS_CLUSTER)
#
# e.g. after `rfaas local-cluster start --run-dir /tmp/rfaas`:
#   scripts/resource-manager-walkthrough.sh /tmp/rfaas/cluster.json
#
# It reads the resource manager's address and the cluster secret from the cluster file, and the
# node credential (what executor managers and operators hold; clients never see it) from
# $RFAAS_NODE_SECRET_FILE or the file node-secret beside the cluster file, then
# registers a synthetic executor manager "walkthrough-n1" (16 cores, no process behind it),
# heartbeats, drains and resumes it, leases, renews and releases cores, shows a full cluster's
# 503, and deregisters the node again: the cluster is left as it was found (but for its next
# lease id, which continues above the adopted lease's). Every call prints
# its method, path, HTTP status and JSON answer; a status other than the expected one stops the
# script with a non-zero exit (tests/docs.rs runs it).
#
# The secret and lease tokens never appear on a command line: curl reads the headers from a
# private temporary file and request bodies from its standard input.
# Needs curl and jq (scripts/setup.sh installs both).
set -euo pipefail

cluster=${1:-${RFAAS_CLUSTER:-}}
if [[ -z "$cluster" ]]; then
    echo "usage: $0 CLUSTER_JSON (or set RFAAS_CLUSTER)" >&2
    exit 2
fi
for tool in curl jq; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is not installed (run scripts/setup.sh)" >&2; exit 2; }
done
[[ -r "$cluster" ]] || { echo "$0: cannot read the cluster file $cluster" >&2; exit 2; }

RM=$(jq -r '.resource_manager // empty' "$cluster")
[[ -n "$RM" ]] || { echo "$0: $cluster names no resource manager (started with --no-resource-manager?)" >&2; exit 2; }
secret_file=$(jq -r '.secret_file' "$cluster")
[[ "$secret_file" = /* ]] || secret_file="$(dirname "$cluster")/$secret_file"

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
auth="$work/auth"          # Authorization: Bearer <cluster secret>
node_auth="$work/node"     # Authorization: Bearer <node credential>
lease_hdr="$work/lease"    # X-Rfaas-Lease-Token: <token>
secret=$(<"$secret_file")
printf 'Authorization: Bearer %s\n' "$secret" >"$auth"
unset secret
node_secret_file=${RFAAS_NODE_SECRET_FILE:-$(dirname "$cluster")/node-secret}
if [[ -r "$node_secret_file" ]]; then
    secret=$(<"$node_secret_file")
    printf 'Authorization: Bearer %s\n' "$secret" >"$node_auth"
    unset secret
else
    # single-user mode: the cluster secret is also the node credential
    node_secret_file=
    cp "$auth" "$node_auth"
fi

# call EXPECTED METHOD PATH [BODY] [EXTRA_HEADER_FILE]: prints the exchange, stores the answer
# in $answer, fails unless the status is EXPECTED. The body travels on standard input. It
# authenticates with the cluster secret, or with the header file $as (as=$node_auth call ...).
answer=
call() {
    local expected=$1 method=$2 path=$3 body=${4:-} extra=${5:-}
    local args=(-sS --max-time 10 -o "$work/body" -w '%{http_code}' -X "$method" -H @"${as:-$auth}")
    [[ -n "$extra" ]] && args+=(-H @"$extra")
    local status
    if [[ -n "$body" ]]; then
        status=$(printf '%s' "$body" | curl "${args[@]}" -H 'Content-Type: application/json' \
            --data-binary @- "http://$RM$path")
    else
        status=$(curl "${args[@]}" "http://$RM$path")
    fi
    answer=$(<"$work/body")
    printf '%-6s %-40s -> %s %s\n' "$method" "$path" "$status" "$(jq -c . <<<"$answer" 2>/dev/null || printf '%s' "$answer")"
    if [[ "$status" != "$expected" ]]; then
        echo "$0: $method $path answered $status, expected $expected" >&2
        exit 1
    fi
}

echo "# resource manager http://$RM (cluster file $cluster)"

echo "# health needs no secret; everything else does"
status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://$RM/v1/health")
echo "GET    /v1/health (no secret)                   -> $status"
[[ "$status" = 200 ]] || { echo "$0: /v1/health answered $status" >&2; exit 1; }
status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://$RM/v1/metrics")
echo "GET    /v1/metrics (no secret)                  -> $status"
[[ "$status" = 401 ]] || { echo "$0: /v1/metrics without the secret answered $status, expected 401" >&2; exit 1; }
call 200 GET /v1/metrics

echo "# an executor manager registers (201 the first time, 200 again), heartbeats, drains, resumes"
node=walkthrough-n1
register='{"name": "'$node'", "address": "127.0.0.1:9", "cores": 16, "memory": 68719476736}'
if [[ -n "$node_secret_file" ]]; then
    echo "# ... with the node credential: a client's cluster secret may not act as a node (403)"
    call 403 POST /v1/nodes "$register"
fi
as=$node_auth call 201 POST /v1/nodes "$register"
as=$node_auth call 200 POST /v1/nodes "$register"
as=$node_auth call 200 POST /v1/nodes/$node/heartbeat
as=$node_auth call 200 POST /v1/nodes/$node/drain
as=$node_auth call 200 POST /v1/nodes/$node/resume
call 200 GET /v1/nodes
call 200 GET /v1/nodes/$node

echo "# a restarted executor manager reports the leases it hosts: unknown ones are adopted"
hosted_id=$(( $(date +%s) * 1000000 + 1000000000000 ))   # above the ids granted so far (µs-based)
hosted_token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
as=$node_auth call 200 POST /v1/nodes '{"name": "'$node'", "address": "127.0.0.1:9", "cores": 16, "memory": 68719476736,
     "hosted": [{"lease": '$hosted_id', "token": "'$hosted_token'", "cores": 4, "memory": 0}]}'
[[ $(jq -r '.adopted[0]' <<<"$answer") = "$hosted_id" ]] || { echo "$0: lease $hosted_id was not adopted" >&2; exit 1; }

echo "# a client leases 8 cores (pack or spread, split over nodes if allowed, TTL in ms)"
call 201 POST /v1/leases '{"cores": 8, "memory_per_core": 0, "policy": "spread", "allow_split": true,
     "ttl_ms": 30000, "client": "walkthrough"}'
lease=$(jq -r .lease <<<"$answer")
token=$(jq -r .token <<<"$answer")
echo "# ... renews it within its TTL (token in the body), looks at it, releases it (token in a header)"
call 200 POST /v1/leases/$lease/renew '{"token": "'$token'"}'
call 200 GET /v1/leases/$lease
printf 'X-Rfaas-Lease-Token: %s\n' "$token" >"$lease_hdr"
call 200 DELETE /v1/leases/$lease "" "$lease_hdr"
echo "# a released lease is gone: 410"
call 410 POST /v1/leases/$lease/renew '{"token": "'$token'"}'

echo "# another lease, released with the token in a body"
call 201 POST /v1/leases '{"cores": 2, "policy": "pack", "ttl_ms": 30000, "client": "walkthrough"}'
lease=$(jq -r .lease <<<"$answer")
token=$(jq -r .token <<<"$answer")
call 403 DELETE /v1/leases/$lease '{"token": "not-the-token"}'
call 200 DELETE /v1/leases/$lease '{"token": "'$token'"}'

echo "# live leases, and recently ended ones"
call 200 GET /v1/leases
call 200 GET "/v1/leases?ended=true"

echo "# when the cluster is full: 503 with what is free"
call 503 POST /v1/leases '{"cores": 1000000, "client": "walkthrough"}'

echo "# the node deregisters: its leases (the adopted one) end"
as=$node_auth call 200 DELETE /v1/nodes/$node
[[ $(jq -r '.ended[0]' <<<"$answer") = "$hosted_id" ]] || { echo "$0: lease $hosted_id did not end with its node" >&2; exit 1; }
call 404 GET /v1/nodes/$node
echo "# walkthrough done: every call answered as expected"
