# shellcheck shell=bash
#
# script/lib.sh: helpers shared by script/server, script/test and script/bootstrap.
# Source it; it is not meant to be run. It only defines functions and a few
# variables, so sourcing it has no side effects beyond that.
#
# The private PostgreSQL/Redis instances started here are throwaway: they live
# under .local/, listen on 127.0.0.1 only, and trade durability for speed. They
# never touch the machine's own services (5432/6379), which may be in use.

# Command substitutions must honour `set -e` too: helpers below run inside
# $(...) and would otherwise carry on after a failed step.
shopt -s inherit_errexit

# Where the repository lives, whatever the caller's working directory is.
CHORUS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CHORUS_ROOT

chorus_log() { printf '==> %s\n' "$*" >&2; }
chorus_warn() { printf 'warning: %s\n' "$*" >&2; }
chorus_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

chorus_is_root() { [[ $(id -u) -eq 0 ]]; }

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# pid_running PID: true while PID exists and is not a zombie. A plain `kill -0`
# is not enough: our own exited children stay zombies until reaped, and in a
# container whose PID 1 does not reap, orphans stay zombies forever.
pid_running() {
	local pid=$1 stat
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/stat ]]; then
		stat=$(<"/proc/$pid/stat") || return 1
		# The command name is in parentheses and may contain spaces: the state
		# is the first field after the last ')'.
		stat=${stat##*) }
		[[ ${stat%% *} != Z ]]
	fi
}

# pid_matches PID WORD: true when PID is running and its command line contains
# WORD. Guards every kill of a pid read from a file against pid reuse.
pid_matches() {
	local pid=$1 word=$2 cmdline
	pid_running "$pid" || return 1
	[[ -r /proc/$pid/cmdline ]] || return 0 # no /proc: trust the pid file
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$word"* ]]
}

# wait_pid_exit PID TIMEOUT_S: poll until PID is gone; false on timeout.
wait_pid_exit() {
	local pid=$1 deadline=$((SECONDS + ${2:-10}))
	while pid_running "$pid"; do
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

# port_in_use PORT: something accepts TCP connections on 127.0.0.1:PORT.
# (Connecting to a closed local port is refused at once, so no timeout needed.)
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port: print a TCP port on 127.0.0.1 that nothing listens on right now.
# It is picked below the kernel's ephemeral range: outgoing connections (a node's own
# to PostgreSQL and Redis included) are never given such a port, so one found free
# stays free until our service binds it. (Port 0 handed out ephemeral ports, and a
# node's outgoing connection once took the port its neighbour was about to bind.)
free_port() {
	local port i low=32768
	if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
		read -r low _ </proc/sys/net/ipv4/ip_local_port_range || low=32768
	fi
	((low > 12000)) || low=32768
	for ((i = 0; i < 500; i++)); do
		port=$((10000 + RANDOM % (low - 10000)))
		if ! port_in_use "$port"; then
			printf '%s\n' "$port"
			return 0
		fi
	done
	chorus_warn "could not find a free TCP port on 127.0.0.1"
	return 1
}

# free_cluster_port [TAKEN...]: like free_port, for a Redis Cluster node, which also listens on
# its cluster bus port PORT+10000: both free now, neither among TAKEN (ports picked but not bound
# yet; pass each picked port and its bus port), both below the ephemeral range.
free_cluster_port() {
	local port i low=32768 taken=" $* "
	if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
		read -r low _ </proc/sys/net/ipv4/ip_local_port_range || low=32768
	fi
	((low > 22000)) || low=32768
	for ((i = 0; i < 500; i++)); do
		port=$((10000 + RANDOM % (low - 20000)))
		[[ $taken == *" $port "* || $taken == *" $((port + 10000)) "* ]] && continue
		if ! port_in_use "$port" && ! port_in_use $((port + 10000)); then
			printf '%s\n' "$port"
			return 0
		fi
	done
	chorus_warn "could not find a free pair of TCP ports (PORT, PORT+10000) on 127.0.0.1"
	return 1
}

# wait_http URL TIMEOUT_S [PID]: wait until URL answers 2xx. With PID, give up
# as soon as that process has died (no point waiting out the timeout).
# --noproxy: an http_proxy in the environment must not capture loopback URLs.
wait_http() {
	local url=$1 timeout=${2:-30} pid=${3:-}
	local deadline=$((SECONDS + timeout))
	while :; do
		if curl --noproxy '*' -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
			return 0
		fi
		if [[ -n $pid ]] && ! pid_running "$pid"; then
			chorus_warn "process $pid exited while waiting for $url"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			chorus_warn "timed out after ${timeout}s waiting for $url"
			return 1
		fi
		sleep 0.2
	done
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# chorus_pg_bin: print the bin directory of the newest PostgreSQL server
# installed from Debian's packages. CHORUS_PG_BIN overrides the search.
chorus_pg_bin() {
	local dir
	if [[ -n ${CHORUS_PG_BIN:-} ]]; then
		if [[ -x $CHORUS_PG_BIN/initdb && -x $CHORUS_PG_BIN/postgres ]]; then
			printf '%s\n' "$CHORUS_PG_BIN"
			return 0
		fi
		chorus_warn "CHORUS_PG_BIN=$CHORUS_PG_BIN has no initdb/postgres"
		return 1
	fi
	# Highest version first; sort -V copes with 9.6 vs 16.
	dir=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
	if [[ -n $dir && -x /usr/lib/postgresql/$dir/bin/initdb && -x /usr/lib/postgresql/$dir/bin/postgres ]]; then
		printf '%s\n' "/usr/lib/postgresql/$dir/bin"
		return 0
	fi
	printf 'error: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run script/bootstrap\n' >&2
	return 1
}

# _pg_as_owner CMD...: run a PostgreSQL binary as the user that owns the data.
# initdb and postgres refuse to run as root, and CI and developers' machines
# run as root, so as root we drop to the `postgres` system user. `cd /` keeps
# postgres from complaining about a working directory it cannot enter.
_pg_as_owner() {
	if chorus_is_root; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# _ensure_postgres_user: the `postgres` system user exists once PostgreSQL is
# installed from apt; create it if something removed it or the binaries came
# from elsewhere.
_ensure_postgres_user() {
	id -u postgres >/dev/null 2>&1 && return 0
	chorus_log "creating system user postgres (initdb refuses to run as root)"
	if getent group postgres >/dev/null 2>&1; then
		useradd --system --gid postgres --home-dir /var/lib/postgresql --no-create-home --shell /bin/sh postgres
	else
		useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home --shell /bin/sh postgres
	fi
}

# _pg_instance_dir DIR: print the directory that really holds the instance for
# DIR, creating it. Normally DIR itself. As root the instance is owned by the
# `postgres` user, which must be able to reach DIR: a repository under /root
# (mode 700) is not reachable, and we never loosen permissions on a parent.
# Then the instance lives in /tmp under a name keyed by the hash of DIR's
# absolute path, so the same DIR always maps to the same place (start and stop
# agree), and DIR/log links to its log.
_pg_instance_dir() {
	local dir=$1 abs hash alt
	mkdir -p "$dir"
	abs=$(cd "$dir" && pwd -P)
	if ! chorus_is_root; then
		printf '%s\n' "$abs"
		return 0
	fi
	_ensure_postgres_user
	chown postgres: "$abs"
	if runuser -u postgres -- test -x "$abs" -a -w "$abs" 2>/dev/null; then
		printf '%s\n' "$abs"
		return 0
	fi
	hash=$(printf '%s' "$abs" | sha256sum | cut -c1-16)
	alt=/tmp/chorus-pg-$hash
	if [[ ! -d $alt ]]; then
		chorus_log "user postgres cannot reach $abs (a parent directory is not traversable); using $alt instead"
		mkdir -m 700 "$alt"
		chown postgres: "$alt"
	fi
	# /tmp is shared: only use a directory that the postgres user owns.
	[[ $(stat -c %U "$alt") == postgres ]] || chorus_die "$alt exists but is not owned by postgres; remove it"
	ln -sfn "$alt/log" "$abs/log"
	printf '%s\n' "$alt"
}

# _pg_socket_dir INSTANCE: a unix socket path must stay under ~107 bytes; a
# deep checkout would exceed it, so then we go TCP-only ('' = no socket).
_pg_socket_dir() {
	local sock=$1/socket
	if ((${#sock} + 20 > 100)); then
		printf '\n'
	else
		printf '%s\n' "$sock"
	fi
}

# start_private_postgres DIR PORT: a throwaway PostgreSQL on 127.0.0.1:PORT with
# trust auth for user `postgres`, data in DIR/data, log in DIR/log.
start_private_postgres() {
	local dir=$1 port=$2 bin inst sock locale
	bin=$(chorus_pg_bin) || return 1
	inst=$(_pg_instance_dir "$dir") || return 1
	sock=$(_pg_socket_dir "$inst")

	# Stale or still-running instance from an earlier run: reuse it when it
	# already serves PORT, otherwise stop it so it comes back on PORT.
	if [[ -f $inst/data/postmaster.pid ]] && _pg_as_owner "$bin/pg_ctl" -D "$inst/data" status >/dev/null 2>&1; then
		if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
			chorus_log "PostgreSQL already running on 127.0.0.1:$port ($inst)"
			return 0
		fi
		stop_private_postgres "$dir"
	fi

	if [[ ! -s $inst/data/PG_VERSION ]]; then
		rm -rf "$inst/data"
		# C.UTF-8 gives Unicode-aware lower()/upper() (case-insensitive room
		# names) without depending on a generated locale; plain C otherwise.
		# (No grep -q: it would close the pipe early, and pipefail would then
		# count locale's SIGPIPE as a failure.)
		if locale -a 2>/dev/null | grep -Eix 'c\.utf-?8' >/dev/null; then locale=C.UTF-8; else locale=C; fi
		chorus_log "initdb $inst/data"
		_pg_as_owner "$bin/initdb" -D "$inst/data" -U postgres --auth=trust \
			--encoding=UTF8 --locale="$locale" --no-sync >"$inst/initdb.log" 2>&1 || {
			tail -n 20 "$inst/initdb.log" >&2
			chorus_warn "initdb failed; full output in $inst/initdb.log"
			return 1
		}
	fi
	if [[ -n $sock ]]; then
		mkdir -p "$sock"
	fi
	if chorus_is_root; then
		chown -R postgres: "$inst"
	fi

	# Speed over durability: these instances are thrown away. pg_ctl hands the
	# -o string to /bin/sh, hence the inner quotes around the socket path.
	# CHORUS_PG_DURABLE=1 keeps PostgreSQL's own defaults (fsync, synchronous_commit
	# and full_page_writes on): loadtest/compare's dm scenarios measure commits.
	local opts="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$sock'"
	if [[ ${CHORUS_PG_DURABLE:-0} != 1 ]]; then
		opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	fi
	opts+=" -c max_connections=300 -c timezone=UTC"
	chorus_log "starting PostgreSQL on 127.0.0.1:$port (log: $inst/log)"
	if ! _pg_as_owner "$bin/pg_ctl" -D "$inst/data" -l "$inst/log" -o "$opts" -w -t 60 start >/dev/null; then
		tail -n 20 "$inst/log" >&2 || true
		chorus_warn "PostgreSQL did not start; see $inst/log"
		return 1
	fi
	local deadline=$((SECONDS + 30))
	until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
		if ((SECONDS >= deadline)); then
			chorus_warn "PostgreSQL on port $port not ready after 30s; see $inst/log"
			return 1
		fi
		sleep 0.2
	done
}

# stop_private_postgres DIR: fast shutdown; fine if it is not running.
stop_private_postgres() {
	local dir=$1 bin inst
	[[ -d $dir ]] || return 0
	bin=$(chorus_pg_bin 2>/dev/null) || return 0
	inst=$(_pg_instance_dir "$dir") || return 1
	[[ -f $inst/data/postmaster.pid ]] || return 0
	_pg_as_owner "$bin/pg_ctl" -D "$inst/data" status >/dev/null 2>&1 || return 0
	chorus_log "stopping PostgreSQL ($inst)"
	_pg_as_owner "$bin/pg_ctl" -D "$inst/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
		_pg_as_owner "$bin/pg_ctl" -D "$inst/data" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
		chorus_warn "could not stop PostgreSQL in $inst/data"
}

# remove_private_postgres DIR: stop it and delete its data, wherever it lives
# (DIR itself or its /tmp stand-in), for a fresh initdb next time.
remove_private_postgres() {
	local dir=$1 inst
	[[ -d $dir ]] || return 0
	stop_private_postgres "$dir"
	inst=$(_pg_instance_dir "$dir") || return 1
	rm -rf "$inst"
	rm -rf "$dir"
}

# private_postgres_log DIR: where start_private_postgres logs for DIR.
private_postgres_log() {
	printf '%s/log\n' "$(_pg_instance_dir "$1")"
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

_redis_ping() {
	local port=$1 reply
	if command -v redis-cli >/dev/null 2>&1; then
		[[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]
		return
	fi
	# redis-tools missing: speak RESP over bash's /dev/tcp (in a subshell, so
	# the descriptor closes with it).
	(
		exec 3<>"/dev/tcp/127.0.0.1/$port" &&
			printf 'PING\r\n' >&3 &&
			IFS= read -r -t 2 reply <&3 &&
			[[ $reply == +PONG* ]]
	) 2>/dev/null
}

# start_private_redis DIR PORT [ARG...]: a throwaway Redis on 127.0.0.1:PORT that
# keeps nothing on disk; pid, log and any dump stay in DIR. ARGs go to redis-server.
start_private_redis() {
	local dir=$1 port=$2 pid
	shift 2
	command -v redis-server >/dev/null 2>&1 || chorus_die "redis-server not found: run script/bootstrap"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd -P)
	if [[ -f $dir/redis.pid ]]; then
		pid=$(<"$dir/redis.pid")
		if pid_matches "$pid" redis-server && _redis_ping "$port"; then
			chorus_log "Redis already running on 127.0.0.1:$port ($dir)"
			return 0
		fi
		stop_private_redis "$dir"
	fi
	chorus_log "starting Redis on 127.0.0.1:$port (log: $dir/redis.log)"
	redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
		--daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@" >/dev/null
	local deadline=$((SECONDS + 30))
	until _redis_ping "$port"; do
		if ((SECONDS >= deadline)); then
			tail -n 20 "$dir/redis.log" >&2 || true
			chorus_warn "Redis on port $port not ready after 30s; see $dir/redis.log"
			return 1
		fi
		sleep 0.1
	done
}

# stop_private_redis DIR: SIGTERM the instance from DIR/redis.pid (it saves
# nothing, so it exits at once); fine if it is not running.
stop_private_redis() {
	local dir=$1 pid
	[[ -f $dir/redis.pid ]] || return 0
	pid=$(<"$dir/redis.pid")
	if pid_matches "$pid" redis-server; then
		chorus_log "stopping Redis ($dir)"
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_pid_exit "$pid" 10; then
			chorus_warn "Redis $pid ignored SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			wait_pid_exit "$pid" 5 || true
		fi
	fi
	rm -f "$dir/redis.pid"
}

# start_cluster_redis DIR PORT: one node of a throwaway Redis Cluster on
# 127.0.0.1:PORT (its cluster bus on PORT+10000), with its cluster state
# (nodes.conf), pid and log in DIR. Started again on the same DIR after a crash,
# it rejoins its cluster (as a replica if its shard failed over meanwhile).
# cluster-node-timeout 2000: a dead primary's replica takes over within seconds.
start_cluster_redis() {
	local dir=$1 port=$2
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd -P)
	start_private_redis "$dir" "$port" --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
		--cluster-node-timeout 2000 --repl-diskless-sync-delay 0
}

# redis_cluster_pids DIR: the pids of the live nodes start_cluster_redis ran under
# DIR/*/ (from their pid files), one per line.
redis_cluster_pids() {
	local f pid
	for f in "$1"/*/redis.pid; do
		[[ -f $f ]] || continue
		pid=$(<"$f")
		if pid_matches "$pid" redis-server; then printf '%s\n' "$pid"; fi
	done
}

# stop_redis_cluster DIR [PID...]: stop every node of the cluster under DIR, and
# the PIDs (redis-server processes recorded elsewhere, checked again here);
# fine if none runs.
stop_redis_cluster() {
	local dir=$1 pid pids=()
	shift
	for pid in "$@"; do
		if pid_matches "$pid" redis-server; then pids+=("$pid"); fi
	done
	[[ -d $dir ]] && mapfile -t -O "${#pids[@]}" pids < <(redis_cluster_pids "$dir")
	((${#pids[@]} > 0)) || return 0
	chorus_log "stopping the Redis Cluster ($dir)"
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for pid in "${pids[@]}"; do
		if ! wait_pid_exit "$pid" 10; then
			chorus_warn "Redis $pid ignored SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			wait_pid_exit "$pid" 5 || true
		fi
	done
	rm -f "$dir"/*/redis.pid
}

# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------

# chorus_nginx_bin: nginx lives in /usr/sbin, which is not on every user's PATH.
chorus_nginx_bin() {
	local n
	for n in "$(command -v nginx 2>/dev/null)" /usr/sbin/nginx /usr/local/sbin/nginx; do
		if [[ -n $n && -x $n ]]; then
			printf '%s\n' "$n"
			return 0
		fi
	done
	printf 'error: nginx not found: run script/bootstrap\n' >&2
	return 1
}

# render_nginx_conf TEMPLATE OUT LISTEN PREFIX LOG_DIR UPSTREAM...
# Fills deploy/nginx/chorus.conf.template:
#   @LB_PORT@   what `listen` takes: a port (8080) or address:port (127.0.0.1:8080)
#   @PREFIX@    directory for the pid file and temp files (must exist)
#   @LOG_DIR@   directory for access.log and error.log
#   @UPSTREAMS@ alone on its line: replaced by one `server HOST:PORT;` line per
#               UPSTREAM, with the same indentation
#   @NODE_UPSTREAMS@, @SIO_ROUTES@  alone on their lines: for each UPSTREAM
#               given as NODE_ID=HOST:PORT, the n-th on the command line, an
#               `upstream chorus_node_<n>` holding that one server, and a map
#               line sending a Socket.IO sid issued by that node (`<node>.<hex>`,
#               <node> = NODE_ID with characters outside [A-Za-z0-9-] made '-',
#               as the node does) to it. A bare HOST:PORT (a server whose ids are
#               unknown) joins only the balanced group.
# Comment lines are copied unchanged.
render_nginx_conf() {
	local template=$1 out=$2 listen=$3 prefix=$4 log_dir=$5
	shift 5
	(($# > 0)) || chorus_die "render_nginx_conf: no upstreams"
	local u id addr n=0 servers=() node_ups=() routes=() seen=" "
	for u in "$@"; do
		n=$((n + 1))
		if [[ $u == *=* ]]; then
			id=${u%%=*} addr=${u#*=}
			# What the node puts before the dot of a sid it issues.
			id=${id//[^A-Za-z0-9-]/-}
			[[ -n $id ]] || chorus_die "render_nginx_conf: empty node id in '$u'"
			[[ $seen != *" $id "* ]] || chorus_die "render_nginx_conf: two nodes issue sids '$id.…' ('$u')"
			seen+="$id "
			node_ups+=("upstream chorus_node_$n {" "    server $addr;" "    keepalive 16;" "}")
			routes+=("\"~^$id\\.\" chorus_node_$n;")
		else
			addr=$u
		fi
		[[ $addr =~ ^[^[:space:]\;{}=]+$ ]] || chorus_die "render_nginx_conf: bad upstream '$u' (want HOST:PORT or NODE_ID=HOST:PORT)"
		servers+=("server $addr;")
	done
	local tmp
	tmp=$(mktemp "$out.XXXXXX")
	# Values are passed through ENVIRON, not -v, so awk does not interpret
	# backslashes; index/substr instead of gsub so '&' stays literal. Lists
	# are newline-separated lines, each placed at the placeholder's indentation.
	LB="$listen" PFX="$prefix" LOGD="$log_dir" \
		UPS="$(printf '%s\n' "${servers[@]}")" \
		NODEUPS="$(((${#node_ups[@]})) && printf '%s\n' "${node_ups[@]}")" \
		ROUTES="$(((${#routes[@]})) && printf '%s\n' "${routes[@]}")" awk '
		function subst(s, key, val,    i, out) {
			out = ""
			while ((i = index(s, key)) > 0) {
				out = out substr(s, 1, i - 1) val
				s = substr(s, i + length(key))
			}
			return out s
		}
		function lines(line, val,    indent, n, l, j) {
			indent = line
			sub(/[^ \t].*$/, "", indent)
			n = split(val, l, "\n")
			for (j = 1; j <= n; j++) if (l[j] != "") print indent l[j]
		}
		# Comments pass through as they are (the header documents the
		# placeholders by name).
		/^[ \t]*#/ { print; next }
		/^[ \t]*@UPSTREAMS@[ \t]*$/ { lines($0, ENVIRON["UPS"]); next }
		/^[ \t]*@NODE_UPSTREAMS@[ \t]*$/ { lines($0, ENVIRON["NODEUPS"]); next }
		/^[ \t]*@SIO_ROUTES@[ \t]*$/ { lines($0, ENVIRON["ROUTES"]); next }
		{
			line = subst($0, "@LB_PORT@", ENVIRON["LB"])
			line = subst(line, "@PREFIX@", ENVIRON["PFX"])
			line = subst(line, "@LOG_DIR@", ENVIRON["LOGD"])
			print line
		}
	' "$template" >"$tmp"
	local left
	left=$(grep -v '^[[:space:]]*#' "$tmp" | grep -Eo '@[A-Z_]+@' | sort -u | tr '\n' ' ') || true
	if [[ -n $left ]]; then
		rm -f "$tmp"
		chorus_die "render_nginx_conf: $template has placeholders this renderer does not fill: $left"
	fi
	chmod 644 "$tmp" # mktemp made it 0600
	mv "$tmp" "$out"
}

# render_compose_nginx_conf OUT: the Docker Compose render of the template
# (committed as deploy/nginx/compose.conf). In the nginx image /var/cache/nginx
# exists and /var/log/nginx/{access,error}.log point at the container's
# stdout/stderr, so `docker compose logs nginx` shows them.
render_compose_nginx_conf() {
	local out=${1:-$CHORUS_ROOT/deploy/nginx/compose.conf} tmp
	tmp=$(mktemp)
	render_nginx_conf "$CHORUS_ROOT/deploy/nginx/chorus.conf.template" "$tmp" \
		8080 /var/cache/nginx /var/log/nginx \
		chorus-1=chorus-1:8080 chorus-2=chorus-2:8080 chorus-3=chorus-3:8080
	{
		printf '# GENERATED from deploy/nginx/chorus.conf.template; do not edit by hand.\n'
		printf "# Regenerate: bash -c 'source script/lib.sh && render_compose_nginx_conf'\n"
		cat "$tmp"
	} >"$out"
	rm -f "$tmp"
}

# ---------------------------------------------------------------------------
# Deployment-file tools (script/check-deploy, run by script/test)
# ---------------------------------------------------------------------------
# A venv with the pinned Python tools of script/requirements-deploy.txt
# (check-jsonschema with the Compose schema, hadolint, shellcheck, kubernetes-validate)
# plus pykustomize, and promtool taken from Debian's prometheus package.
# Everything lives under .local/, so a rerun is offline once installed.
CHORUS_DEPLOY_VENV=$CHORUS_ROOT/.local/venv
CHORUS_DEPLOY_TOOLS_BIN=$CHORUS_ROOT/.local/tools/bin
# kustomize as a library. Its wheel says Python >= 3.14 but it is a cffi
# wrapper that works from 3.9 on: installed with --ignore-requires-python
# --no-deps (cffi comes from the requirements file).
CHORUS_PYKUSTOMIZE=pykustomize==0.1.4

# _deploy_tools_stamp: what the venv must have been built from.
_deploy_tools_stamp() {
	{
		cat "$CHORUS_ROOT/script/requirements-deploy.txt"
		printf '%s\n' "$CHORUS_PYKUSTOMIZE"
	} | sha256sum | cut -c1-32
}

# _promtool_path: promtool from .local/tools/bin, else one on PATH.
_promtool_path() {
	if [[ -x $CHORUS_DEPLOY_TOOLS_BIN/promtool ]]; then
		printf '%s\n' "$CHORUS_DEPLOY_TOOLS_BIN/promtool"
	else
		command -v promtool
	fi
}

# deploy_tools_ready: true when the venv matches the pinned requirements and
# promtool runs. Cheap and offline: script/test calls it every run.
deploy_tools_ready() {
	local stamp=$CHORUS_DEPLOY_VENV/.chorus-deploy-tools promtool
	[[ -x $CHORUS_DEPLOY_VENV/bin/python && -f $stamp ]] || return 1
	[[ $(<"$stamp") == "$(_deploy_tools_stamp)" ]] || return 1
	"$CHORUS_DEPLOY_VENV/bin/python" -c 'import yaml, kubernetes_validate, pykustomize' 2>/dev/null || return 1
	promtool=$(_promtool_path 2>/dev/null) && "$promtool" --version >/dev/null 2>&1
}

# _install_promtool: promtool alone, from Debian's `prometheus` package
# (apt-get download + dpkg-deb -x: the package itself is never installed, so
# no Prometheus server is set up or started on the machine).
_install_promtool() {
	local tmp deb apt_opts=() sudo=()
	if _promtool_path >/dev/null 2>&1 && "$(_promtool_path)" --version >/dev/null 2>&1; then
		return 0
	fi
	if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
		chorus_die "promtool missing and no apt-get/dpkg-deb to fetch it: install Prometheus' promtool on PATH"
	fi
	if chorus_is_root; then
		# apt's sandbox user cannot write into our temp dir; as root, skip it.
		apt_opts=(-o APT::Sandbox::User=root)
	elif command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
	fi
	tmp=$(mktemp -d)
	chorus_log "fetching promtool from Debian's prometheus package"
	if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq prometheus >/dev/null 2>&1); then
		# An empty or stale package list on a fresh machine: refresh it once.
		"${sudo[@]}" apt-get update -qq || chorus_die "apt-get update failed (needed to fetch promtool)"
		(cd "$tmp" && apt-get "${apt_opts[@]}" download -qq prometheus >/dev/null) || {
			rm -rf "$tmp"
			chorus_die "apt-get download prometheus failed (promtool comes from that package)"
		}
	fi
	deb=$(find "$tmp" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)
	mkdir -p "$tmp/x" "$CHORUS_DEPLOY_TOOLS_BIN"
	dpkg-deb -x "$deb" "$tmp/x"
	install -m 0755 "$tmp/x/usr/bin/promtool" "$CHORUS_DEPLOY_TOOLS_BIN/promtool"
	rm -rf "$tmp"
	chorus_log "promtool: $("$CHORUS_DEPLOY_TOOLS_BIN/promtool" --version 2>&1 | head -n 1)"
}

# install_deploy_tools: idempotent; does nothing (and needs no network) when
# deploy_tools_ready already holds.
install_deploy_tools() {
	local venv=$CHORUS_DEPLOY_VENV pip
	if deploy_tools_ready; then
		chorus_log "deployment-check tools: present ($venv, promtool)"
		return 0
	fi
	command -v python3 >/dev/null 2>&1 || chorus_die "python3 not found: run script/bootstrap"
	if [[ -d $venv ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
		chorus_log "removing broken venv $venv"
		rm -rf "$venv"
	fi
	if [[ ! -x $venv/bin/python ]]; then
		chorus_log "creating $venv"
		python3 -m venv "$venv" || chorus_die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
	fi
	pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
	if [[ ! -f $venv/.chorus-deploy-tools || $(<"$venv/.chorus-deploy-tools") != "$(_deploy_tools_stamp)" ]]; then
		chorus_log "pip install -r script/requirements-deploy.txt ($venv)"
		# PIP_ROOT_USER_ACTION: CI runs as root; inside a venv that is fine.
		PIP_ROOT_USER_ACTION=ignore "${pip[@]}" install -r "$CHORUS_ROOT/script/requirements-deploy.txt" ||
			chorus_die "pip install of the deployment-check tools failed"
		PIP_ROOT_USER_ACTION=ignore "${pip[@]}" install --no-deps --ignore-requires-python "$CHORUS_PYKUSTOMIZE" ||
			chorus_die "pip install $CHORUS_PYKUSTOMIZE failed"
		"$venv/bin/python" -c 'import yaml, kubernetes_validate, pykustomize; pykustomize.native_version()' ||
			chorus_die "the deployment-check tools do not load in $venv"
		_deploy_tools_stamp >"$venv/.chorus-deploy-tools"
	fi
	_install_promtool
	deploy_tools_ready || chorus_die "deployment-check tools still incomplete after install"
	chorus_log "deployment-check tools: installed"
}
