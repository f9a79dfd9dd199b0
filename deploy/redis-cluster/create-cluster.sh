#!/bin/sh
# Forms a Redis Cluster out of empty nodes, or leaves a healthy one alone: the one-shot
# `redis-cluster-create` of docker-compose.redis-cluster.yml and the Job of the same name in
# k8s/overlays/dev-redis-cluster (a byte-identical copy there: kustomize reads no file outside
# its directory; script/check-deploy checks that the two agree). POSIX sh and redis-cli only,
# so it runs in the redis image itself.
#
#   REDIS_CLUSTER_NODES     the nodes, space-separated, host or host:port (port 6379 if none);
#                           at least 3 primaries' worth: nodes = primaries x (1 + replicas)
#   REDIS_CLUSTER_REPLICAS  replicas per primary (default 1)
#   REDISCLI_AUTH           the nodes' password (requirepass); redis-cli reads it itself, so it
#                           never shows on a command line
#   REDIS_CLUSTER_WAIT_S    how long to wait for every node to answer, and for nodes that are
#                           already in a cluster to become one healthy cluster (default 60)
#
# What it does, by what the nodes report (CLUSTER INFO):
#   - one healthy cluster of exactly these nodes: nothing (the stack was restarted);
#   - every node empty (knows only itself, no slots): `redis-cli --cluster create`;
#   - anything else, still so after REDIS_CLUSTER_WAIT_S (a node came back empty, addresses
#     changed under a cluster that cannot heal): every node is flushed and reset, and the cluster
#     is created again. Chorus keeps nothing in Redis that has to survive: its nodes resubscribe,
#     catch up from PostgreSQL and renew their presence leases on their own.
# Then it waits until every node reports cluster_state:ok. Exit 0 only with a healthy cluster.
set -eu

replicas=${REDIS_CLUSTER_REPLICAS:-1}
wait_s=${REDIS_CLUSTER_WAIT_S:-60}
nodes=${REDIS_CLUSTER_NODES:-}

log() { echo "create-cluster: $*"; }
die() { echo "create-cluster: $*" >&2; exit 1; }

[ -n "$nodes" ] || die "set REDIS_CLUSTER_NODES (the nodes, space-separated host[:port])"
count=0
for node in $nodes; do count=$((count + 1)); done
[ "$count" -ge $((3 * (1 + replicas))) ] ||
	die "$count nodes: a cluster of $replicas replica(s) per primary needs at least $((3 * (1 + replicas)))"

# host[:port] -> ip:port. CLUSTER MEET (which --cluster create sends) takes addresses, not names.
address() {
	host=${1%:*}
	port=${1##*:}
	if [ "$host" = "$1" ]; then port=6379; fi
	ip=$(getent ahostsv4 "$host" 2>/dev/null | head -n 1 | cut -d ' ' -f 1)
	if [ -z "$ip" ]; then ip=$(getent hosts "$host" 2>/dev/null | head -n 1 | cut -d ' ' -f 1); fi
	[ -n "$ip" ] && echo "$ip:$port"
}

cli() {
	_at=$1
	shift
	redis-cli -h "${_at%:*}" -p "${_at##*:}" "$@"
}

# One field of a node's CLUSTER INFO (its lines end in \r\n).
info() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

deadline=$(($(date +%s) + wait_s))
past_deadline() { [ "$(date +%s)" -ge "$deadline" ]; }

addresses=""
for node in $nodes; do
	until target=$(address "$node") && [ "$(cli "$target" ping 2>/dev/null)" = PONG ]; do
		past_deadline && die "$node does not answer PING within ${wait_s}s (not running, not resolvable, or another password than REDISCLI_AUTH?)"
		sleep 1
	done
	addresses="$addresses $target"
done

# Every node in one healthy cluster of $count nodes.
healthy() {
	for target in $addresses; do
		[ "$(info "$target" cluster_state)" = ok ] && [ "$(info "$target" cluster_known_nodes)" = "$count" ] || return 1
	done
}

empty() {
	for target in $addresses; do
		[ "$(info "$target" cluster_known_nodes)" = 1 ] && [ "$(info "$target" cluster_slots_assigned)" = 0 ] || return 1
	done
}

deadline=$(($(date +%s) + wait_s))
until empty; do
	if healthy; then
		log "the $count nodes already form a healthy cluster: nothing to do"
		exit 0
	fi
	if past_deadline; then
		log "the nodes are neither one healthy cluster nor all empty after ${wait_s}s: resetting every node and creating the cluster again"
		for target in $addresses; do
			# A replica refuses FLUSHALL (READONLY) and needs none: CLUSTER RESET empties it. A
			# primary must be empty first; a client may write in between, hence the retries.
			tries=0
			until cli "$target" flushall >/dev/null 2>&1; [ "$(cli "$target" cluster reset hard 2>&1)" = OK ]; do
				tries=$((tries + 1))
				[ "$tries" -lt 5 ] || die "CLUSTER RESET HARD on $target keeps failing: $(cli "$target" cluster reset hard 2>&1)"
				sleep 1
			done
		done
		break
	fi
	sleep 2
done

log "creating the cluster: $count nodes, $replicas replica(s) per primary:$addresses"
# shellcheck disable=SC2086 # one argument per address
redis-cli --cluster create $addresses --cluster-replicas "$replicas" --cluster-yes

deadline=$(($(date +%s) + wait_s))
until healthy; do
	past_deadline && die "created, but the nodes do not all report cluster_state:ok within ${wait_s}s"
	sleep 1
done
log "the cluster is ready: every node reports cluster_state:ok"
