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
    for b in a b; do
        [ -f "$ci/$b/sim.pid" ] && kill "$(cat "$ci/$b/sim.pid")" 2>/dev/null || true
        [ -f "$ci/$b/sshd.pid" ] && kill "$(cat "$ci/$b/sshd.pid")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start HIL_BINARY | stop" >&2
    exit 2
    ;;
esac
