#!/usr/bin/env bash
# Starts the CI "boards" of scenarios/ci-ssh.yaml: for each of a and b, an sshd
# on 127.0.0.1 (ports 2201, 2202) with its own host key, and a simulator
# (`hil sim serve`) with a fake sysfs tree and an emulated PPK2 under
# /tmp/hil-ci/<board>/sim. Writes the client key and a known_hosts file.
# Usage: .ci/ssh-boards.sh start HIL_BINARY | stop
set -euo pipefail
ci=/tmp/hil-ci
case "${1:-}" in
start)
    hil=$2
    "$0" stop >/dev/null 2>&1 || true
    rm -rf "$ci"
    mkdir -p "$ci" /run/sshd
    chmod 0755 /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$ci/id_ed25519"
    cp "$ci/id_ed25519.pub" "$ci/authorized_keys"
    : > "$ci/known_hosts"
    port=2201
    for b in a b; do
        mkdir -p "$ci/$b"
        ssh-keygen -q -t ed25519 -N '' -f "$ci/$b/host_key"
        cat > "$ci/$b/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $ci/$b/host_key
PidFile $ci/$b/sshd.pid
AuthorizedKeysFile $ci/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CFG
        /usr/sbin/sshd -f "$ci/$b/sshd_config" -E "$ci/$b/sshd.log"
        echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$ci/$b/host_key.pub")" >> "$ci/known_hosts"
        nohup "$hil" sim serve --root "$ci/$b/sim" --name "ci-$b" > "$ci/$b/sim.log" 2>&1 &
        echo $! > "$ci/$b/sim.pid"
        port=$((port + 1))
    done
    for b in a b; do
        for _ in $(seq 100); do [ -e "$ci/$b/sim/ppk2" ] && break; sleep 0.1; done
        [ -e "$ci/$b/sim/ppk2" ] || { cat "$ci/$b/sim.log"; echo "simulator $b did not start"; exit 1; }
    done
    echo "CI boards up: ssh on 127.0.0.1:2201 and :2202, simulators under $ci/{a,b}/sim"
    ;;
stop)
    # Never hangs: each process is signalled by its pid (only if that pid is still the process we
    # started), given a bounded time to exit, then SIGKILLed. Exits 3 if a simulator needed SIGKILL
    # or took over 2 s (issue 16: `hil sim serve` must stop within 2 s of SIGTERM).
    status=0
    # alive PID: running and not a zombie (an orphan's parent may be slow to reap it).
    alive() {
        local state
        state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1 || true)
        [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
    }
    # stop_pid PIDFILE WHAT MATCH: TERM, wait up to 2 s, KILL, wait up to 1 s more.
    stop_pid() {
        local pidfile=$1 what=$2 match=$3 pid cmd i
        [ -f "$pidfile" ] || return 0
        pid=$(cat "$pidfile" 2>/dev/null || true)
        rm -f "$pidfile"
        case "$pid" in '' | *[!0-9]*) return 0 ;; esac
        cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
        case "$cmd" in *"$match"*) ;; *) return 0 ;; esac
        kill -TERM "$pid" 2>/dev/null || return 0
        for i in $(seq 20); do
            alive "$pid" || return 0
            sleep 0.1
        done
        echo "$what (pid $pid) still running 2 s after SIGTERM: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 10); do
            alive "$pid" || break
            sleep 0.1
        done
        return 3
    }
    for b in a b; do
        stop_pid "$ci/$b/sim.pid" "simulator $b" "sim serve" || status=3
        stop_pid "$ci/$b/sshd.pid" "sshd $b" "sshd" || true
    done
    exit "$status"
    ;;
*)
    echo "usage: $0 start HIL_BINARY | stop" >&2
    exit 2
    ;;
esac
