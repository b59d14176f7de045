#!/usr/bin/env bash
# A real labgrid lab on loopback for the CI boards of .ci/ssh-boards.sh (start those first):
# - labgrid pinned (LABGRID_VERSION) in a venv under target/ci-labgrid-venv,
# - a coordinator on 127.0.0.1:20408 (state under /tmp/hil-ci-labgrid/coordinator),
# - one exporter `hil-ci` (--hostname 127.0.0.1) exporting, per board (groups ci-a, ci-b):
#     NetworkService   127.0.0.1:2201 / :2202, user root (the CI sshd boards),
#     RawSerialPort    the board simulator's PPK2 pseudo-terminal, which the exporter serves through
#                      its own ser2net (RFC 2217, `telnet(rfc2217,mode=server)`) while the place is
#                      acquired; a wrapper on the exporter's PATH makes that ser2net listen on
#                      127.0.0.1 only,
# - places ci-a and ci-b matching those groups, tagged board=ci.
# Everything started is recorded by pid under /tmp/hil-ci-labgrid and stopped by that pid.
# Idempotent: `start` stops a previous lab first; `stop` on a stopped lab does nothing.
# Usage: .ci/labgrid-lab.sh start | stop | env
#   env prints the variables the tests and `hil` use (HIL_LABGRID_CLIENT, LG_COORDINATOR).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
lab=/tmp/hil-ci-labgrid
boards=/tmp/hil-ci
venv=${HIL_LABGRID_VENV:-$repo/target/ci-labgrid-venv}
LABGRID_VERSION=26.0.1
coordinator=127.0.0.1:20408
client=$venv/bin/labgrid-client

# alive PID: running and not a zombie.
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1 || true)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# stop_pid PIDFILE WHAT MATCH: TERM, wait up to 5 s, KILL. Only signals the pid if its command line
# still contains MATCH (a recycled pid is left alone).
stop_pid() {
    local pidfile=$1 what=$2 match=$3 pid cmd
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    rm -f "$pidfile"
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    case "$cmd" in *"$match"*) ;; *) return 0 ;; esac
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        alive "$pid" || return 0
        sleep 0.1
    done
    echo "$what (pid $pid) still running 5 s after SIGTERM: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

venv_up() {
    if [ ! -x "$venv/bin/pip" ]; then
        rm -rf "$venv"
        # Debian's python3 (not a pyenv shim): its venv module needs python3-venv.
        if ! /usr/bin/python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends python3-venv
            /usr/bin/python3 -m venv "$venv"
        fi
    fi
    if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "labgrid==$LABGRID_VERSION"; then
        "$venv/bin/pip" install -q --disable-pip-version-check "labgrid==$LABGRID_VERSION"
    fi
    if [ ! -x /usr/sbin/ser2net ] && ! command -v ser2net >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends ser2net
    fi
}

# lgc ARGS: labgrid-client against the lab's coordinator, failing with its output.
lgc() {
    "$client" -x "$coordinator" "$@"
}

case "${1:-}" in
start)
    for b in a b; do
        [ -e "$boards/$b/sim/ppk2" ] || {
            echo "no CI board $b ($boards/$b/sim/ppk2 missing): run .ci/ssh-boards.sh start HIL first" >&2
            exit 1
        }
    done
    "$0" stop >/dev/null 2>&1 || true
    venv_up
    rm -rf "$lab"
    mkdir -p "$lab/coordinator" "$lab/bin"

    # The exporter starts `ser2net` from PATH with an accepter `tcp,PORT` (every interface) and
    # ser2net's default 64-byte device buffer. This wrapper binds it to loopback and gives the
    # connection a 16 KiB buffer (a PPK2 streams 400 kB/s: with 64 bytes ser2net wakes 6,250 times a
    # second and, on a loaded host, stalls long enough to lose samples; harness/tests/serial_net.rs).
    # `ser2net -v` (labgrid's version check) passes through untouched.
    real_ser2net=$(command -v ser2net || echo /usr/sbin/ser2net)
    cat > "$lab/bin/ser2net" <<WRAP
#!/usr/bin/env bash
args=()
for a in "\$@"; do args+=("\${a/),tcp,/),tcp,127.0.0.1,}"); done
case " \$* " in *" -Y "*) args+=(-Y "    dev-to-net-bufsize: 16384") ;; esac
exec "$real_ser2net" "\${args[@]}"
WRAP
    chmod +x "$lab/bin/ser2net"

    (cd "$lab/coordinator" && exec nohup "$venv/bin/labgrid-coordinator" -l "$coordinator" \
        > "$lab/coordinator.log" 2>&1) &
    echo $! > "$lab/coordinator.pid"
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${coordinator##*:}") 2>/dev/null && break
        sleep 0.1
    done

    {
        for b in a b; do
            port=$((2200 + $([ $b = a ] && echo 1 || echo 2)))
            pty=$(readlink -f "$boards/$b/sim/ppk2")
            cat <<YAML
ci-$b:
  NetworkService:
    address: 127.0.0.1
    username: root
    port: $port
  RawSerialPort:
    port: $pty
    speed: 115200
YAML
        done
    } > "$lab/exporter.yaml"
    PATH="$lab/bin:$PATH" nohup "$venv/bin/labgrid-exporter" -c "$coordinator" -n hil-ci \
        --hostname 127.0.0.1 "$lab/exporter.yaml" > "$lab/exporter.log" 2>&1 &
    echo $! > "$lab/exporter.pid"

    # Wait until the exporter's four resources are on the coordinator.
    for _ in $(seq 100); do
        n=$(lgc resources 2>/dev/null | grep -c '^hil-ci/' || true)
        [ "$n" -ge 4 ] && break
        sleep 0.2
    done
    [ "${n:-0}" -ge 4 ] || { cat "$lab/exporter.log"; echo "exporter did not publish its resources" >&2; exit 1; }

    for b in a b; do
        lgc -p "ci-$b" create
        lgc -p "ci-$b" add-match "hil-ci/ci-$b/*"
        lgc -p "ci-$b" set-tags board=ci
    done
    # Per-place paths for scenarios/ci-labgrid.yaml (`/tmp/hil-ci-labgrid/boards/{place}/...`).
    mkdir -p "$lab/boards"
    for b in a b; do ln -sfn "$boards/$b" "$lab/boards/ci-$b"; done
    lgc -v places > "$lab/places.txt"
    echo "labgrid lab up: coordinator $coordinator, exporter hil-ci, places ci-a ci-b (board=ci)"
    ;;
stop)
    # Exporter first (it stops the ser2net children it started), then the coordinator.
    stop_pid "$lab/exporter.pid" "labgrid-exporter" "labgrid-exporter"
    stop_pid "$lab/coordinator.pid" "labgrid-coordinator" "labgrid-coordinator"
    ;;
env)
    echo "HIL_LABGRID_CLIENT=$client"
    echo "LG_COORDINATOR=$coordinator"
    ;;
*)
    echo "usage: $0 start | stop | env" >&2
    exit 2
    ;;
esac
