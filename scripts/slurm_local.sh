#!/usr/bin/env bash
# A single-node SLURM (munge + MariaDB + slurmdbd + slurmctld + slurmd) for tests, run as root.
#
#   bash scripts/slurm_local.sh install   # apt-get install slurm-wlm, slurmdbd, munge, mariadb (Debian)
#   bash scripts/slurm_local.sh start     # start it (a no-op when it already answers); prints SLURM_CONF=...
#   bash scripts/slurm_local.sh status    # exit 0 when it answers
#   bash scripts/slurm_local.sh stop      # stop every daemon it started, by the process ids it wrote
#
# Everything lives in $VGP_SLURM_DIR (default /tmp/vgp-slurm): its own slurm.conf (use it with
# `export SLURM_CONF=$VGP_SLURM_DIR/etc/slurm.conf`) and its own database on 127.0.0.1:$VGP_SLURM_DB_PORT;
# munged runs on its default socket with the default key (started only when none answers there). Slurm's
# files in /etc are not touched, so it cannot disturb a real cluster's set-up.
#
# Debian 12's Slurm 22.05 needs (see the comments in slurm.conf below): no cgroup.conf at all,
# proctrack/linuxproc and task/none, a DefMemPerCPU, immediate scheduling, a short credential lifetime
# (a requeued job otherwise waits two minutes) and accounting (otherwise a job killed hard is never seen
# as finished by `sacct`, and waiting on it hangs).
set -euo pipefail

DIR=${VGP_SLURM_DIR:-/tmp/vgp-slurm}
DB_PORT=${VGP_SLURM_DB_PORT:-33061}
CLUSTER=vgp
export SLURM_CONF=$DIR/etc/slurm.conf

die() { echo "slurm_local: $*" >&2; exit 1; }

answers() { timeout 5 sinfo -h >/dev/null 2>&1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local end=$((SECONDS + $1)) what=$2; shift 2
    while ((SECONDS < end)); do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "$what did not come up within ${t}s (logs in $DIR/log)"
}

install() {
    local missing=()
    for c in slurmctld slurmd slurmdbd munged mariadbd; do command -v "$c" >/dev/null || missing+=("$c"); done
    [[ ${#missing[@]} -eq 0 ]] && { echo "slurm_local: already installed"; return; }
    [[ $(id -u) -eq 0 ]] || die "installing needs root (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm, slurmdbd, munge and mariadb-server yourself"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmdbd munge mariadb-server mariadb-client >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # MB, 80% of the machine
    mkdir -p "$DIR"/{etc,log,state,spool,db,run}
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job otherwise waits 120 s for its credential to expire
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# without systemd and cgroups: track processes by parent id, bind nothing (and no cgroup.conf at all:
# its CgroupPlugin=disabled makes slurmd exit)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# otherwise the scheduler starts about two jobs every three seconds
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# otherwise a job that asks for no memory takes the whole node
DefMemPerCPU=$(( mem / cpus ))
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MinJobAge=60
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start() {
    if answers; then echo "slurm_local: already running"; echo "SLURM_CONF=$SLURM_CONF"; return; fi
    [[ $(id -u) -eq 0 ]] || die "starting the local SLURM needs root"
    for c in slurmctld slurmd slurmdbd munged mariadbd mysql_install_db; do
        command -v "$c" >/dev/null || die "$c not found (run: bash $0 install)"
    done
    write_conf

    # munge on its default socket (the Slurm clients talk to slurmdbd through it whatever AuthInfo says);
    # left alone when one already runs there
    if ! pid_alive "$DIR/run/munged.pid" && ! munge -n </dev/null >/dev/null 2>&1; then
        [[ -f /etc/munge/munge.key ]] || mungekey --create
        mkdir -p /run/munge
        munged --force --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log"
    fi

    # MariaDB on 127.0.0.1:$DB_PORT for slurmdbd
    if ! pid_alive "$DIR/run/mariadb.pid"; then
        [[ -d $DIR/db/mysql ]] || mysql_install_db --user=root --datadir="$DIR/db" >"$DIR/log/mariadb-install.log" 2>&1
        cat >"$DIR/etc/db-init.sql" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
        (setsid mariadbd --no-defaults --user=root --datadir="$DIR/db" --socket="$DIR/run/mariadb.sock" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" \
            --init-file="$DIR/etc/db-init.sql" --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &)
        wait_for 60 mariadb bash -c "echo > /dev/tcp/127.0.0.1/$DB_PORT"
    fi

    pid_alive "$DIR/run/slurmdbd.pid" || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    pid_alive "$DIR/run/slurmctld.pid" || slurmctld
    pid_alive "$DIR/run/slurmd.pid" || slurmd
    wait_for 30 "slurmctld/slurmd" bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
    echo "slurm_local: running ($(sinfo -h -o '%P %D nodes %c cpus %T'))"
    echo "SLURM_CONF=$SLURM_CONF"
}

stop() {
    local pidfile pid
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        pidfile=$DIR/run/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    echo "slurm_local: stopped"
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) answers && echo "slurm_local: running" || { echo "slurm_local: not running"; exit 1; } ;;
    *) die "usage: $0 install|start|status|stop" ;;
esac
