"""A real SLURM cluster on this one machine, for tests and CI: slurmctld plus two slurmd daemons that
act as nodes n1 and n2 (partition `debug`, CPU only, every core and 90% of the memory each).

    python -m alm.launch.local_slurm start [PREFIX]    # prints `export SLURM_CONF=PREFIX/slurm.conf` (also in PREFIX/env.sh)
    python -m alm.launch.local_slurm stop [PREFIX]     # cancels its jobs, stops only the daemons it started

Needs root. Packages that are missing (slurmctld slurmd slurm-client munge) are installed with
apt-get (`apt-get update` only if the install fails). MUNGE: a munged that already answers is
used; otherwise one is started (and its key created if there is none) and stopped again by `stop`.
`start` is idempotent (a running cluster is only checked) and restarts the daemons if slurm.conf
changes (another port base). The daemons are stopped by the pids in PREFIX/run/, never by name.
Layout: PREFIX/{slurm.conf,env.sh,log/,run/,state/,spool/n1,spool/n2}. Defaults: PREFIX
/tmp/alm-slurm, ports 16817..16819 ($SLURM_LOCAL_PORT_BASE or --port-base).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES = ("n1", "n2")
PARTITION = "debug"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/munged", "/usr/bin/munge")
DEFAULT_PREFIX = "/tmp/alm-slurm"
DEFAULT_PORT_BASE = 16817
READY_STATES = {"idle", "mixed", "allocated", "completing"}


class ClusterError(RuntimeError):
    """The local cluster could not be started or stopped (the message carries the logs' tails)."""


def _log(msg: str) -> None:
    print(f"[local_slurm] {msg}", file=sys.stderr, flush=True)


def _env(conf: Path) -> dict:
    return dict(os.environ, SLURM_CONF=str(conf), PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


# ----------------------------------------------------------------------------------------------
# processes


def _alive(pid: int, name: str) -> bool:
    """pid runs (not a zombie: PID 1 here may never reap) and its command name starts with `name`."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state not in ("Z", "X") and comm.startswith(name)


def _pid(pidfile: Path, name: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and _alive(pid, name) else None


def _terminate(pid: int, name: str, wait: float = 30.0) -> None:
    _log(f"stopping {name} (pid {pid})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + wait
    while time.time() < deadline and _alive(pid, name):
        time.sleep(0.25)
    if _alive(pid, name):
        _log(f"{name} (pid {pid}) ignored SIGTERM for {wait:.0f} s: SIGKILL")
        os.kill(pid, signal.SIGKILL)


def _wait(what: str, ok, timeout: float, failed=None) -> None:
    deadline = time.time() + timeout
    while not ok():
        if failed is not None:
            failed()
        if time.time() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------------
# pieces of `start`


def ensure_packages(log_dir: Path) -> None:
    if all(os.access(b, os.X_OK) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise ClusterError(f"SLURM is not installed ({', '.join(PACKAGES)}) and only root can install it")
    apt_log = log_dir / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    _log(f"installing {' '.join(PACKAGES)} (log: {apt_log})")
    with open(apt_log, "a") as log:
        if subprocess.run(install, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env).returncode != 0:
            _log("install failed: apt-get update, then again")
            ok = (subprocess.run(["apt-get", "update"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env).returncode == 0
                  and subprocess.run(install, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env).returncode == 0)
            if not ok:
                raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed; see {apt_log}:\n{_tail(apt_log)}")


def slurm_conf(prefix: Path, port_base: int) -> str:
    """The cluster's slurm.conf: two nodes on this host told apart by their ports."""
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    run, log = prefix / "run", prefix / "log"
    lines = [
        "# written by launch/local_slurm.py: a local test cluster, rewritten on every start",
        "ClusterName=alm-local",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={port_base}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "AuthInfo=cred_expire=5",  # a requeued job may start again after ~7 s instead of ~2 min
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SlurmdParameters=config_overrides",  # both slurmds claim the whole machine: do not check hardware
        "SchedulerParameters=bf_interval=1,sched_interval=2",
        "JobRequeue=1",
        "MinJobAge=600",  # ended jobs stay visible to scontrol for 10 minutes
        "ReturnToService=2",
        f"StateSaveLocation={prefix / 'state'}",
        f"SlurmctldPidFile={run / 'slurmctld.pid'}",
        f"SlurmctldLogFile={log / 'slurmctld.log'}",
        f"SlurmdPidFile={run / 'slurmd-%n.pid'}",
        f"SlurmdLogFile={log / 'slurmd-%n.log'}",
        f"SlurmdSpoolDir={prefix / 'spool' / '%n'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for i, node in enumerate(NODES, start=1):
        lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port_base + i} Sockets=1 "
                     f"CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem_mb} State=UNKNOWN")
    lines.append(f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _munge_ok() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_munge(run: Path, log_dir: Path) -> None:
    if _munge_ok():
        return
    import pwd

    user = pwd.getpwnam("munge")
    key = Path("/etc/munge/munge.key")
    for folder, mode in ((Path("/etc/munge"), 0o700), (Path("/run/munge"), 0o755), (Path("/var/log/munge"), 0o700),
                         (Path("/var/lib/munge"), 0o700)):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(mode)
    if not key.is_file() or key.stat().st_size == 0:
        _log(f"creating {key}")
        key.write_bytes(os.urandom(1024))
        os.chown(key, user.pw_uid, user.pw_gid)
        key.chmod(0o400)
    _log("starting munged")
    with open(log_dir / "munged.out", "a") as out:
        p = subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], stdin=subprocess.DEVNULL, stdout=out,
                           stderr=out)
    if p.returncode != 0:
        raise ClusterError(f"munged failed to start ({p.returncode}):\n{_tail(log_dir / 'munged.out')}")
    _wait("munged to answer", _munge_ok, 10)
    shutil.copyfile("/run/munge/munged.pid", run / "munged.pid")  # marks it as started by us


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def _diagnose(prefix: Path) -> str:
    parts = []
    for path in [prefix / "log" / "slurmctld.log", *sorted((prefix / "log").glob("slurmd-*.log")),
                 *sorted((prefix / "log").glob("*.out")), Path("/var/log/munge/munged.log")]:
        if path.is_file() and path.stat().st_size:
            parts.append(f"----- {path} (end) -----\n{_tail(path)}")
    return "\n".join(parts)


def _node_states(conf: Path) -> dict[str, str]:
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %T"], capture_output=True, text=True,
                           timeout=10, env=_env(conf))
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split()[:2] for line in p.stdout.splitlines() if len(line.split()) >= 2)


def _ctld_answers(conf: Path) -> bool:
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, env=_env(conf))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in p.stdout


def _daemon(name: str, pidfile: Path, cmd: list[str], log_dir: Path, conf: Path) -> None:
    if _pid(pidfile, name.split("-")[0]):
        return
    pidfile.unlink(missing_ok=True)
    _log(f"starting {name}")
    with open(log_dir / f"{name}.out", "a") as out:  # the daemon forks; this returns once it is detached
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_env(conf))
    if p.returncode != 0:
        raise ClusterError(f"{name} exited with {p.returncode}")


def start(prefix: str | Path = DEFAULT_PREFIX, port_base: int | None = None, timeout: float = 60.0,
          keep_state: bool = False) -> Path:
    """Start (or check) the cluster; returns the slurm.conf path clients need as $SLURM_CONF."""
    prefix = Path(prefix).absolute()
    if any(c.isspace() for c in str(prefix)):
        raise ClusterError(f"{prefix}: the cluster's folder must not contain whitespace")
    if os.geteuid() != 0:
        raise ClusterError("the local SLURM cluster needs root (slurmd, munged, apt-get)")
    port_base = port_base or int(os.environ.get("SLURM_LOCAL_PORT_BASE", DEFAULT_PORT_BASE))
    run, log_dir, conf = prefix / "run", prefix / "log", prefix / "slurm.conf"
    for d in (run, log_dir, prefix / "state", *(prefix / "spool" / n for n in NODES)):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        ensure_packages(log_dir)
        text = slurm_conf(prefix, port_base)
        if not conf.is_file() or conf.read_text() != text:
            if any(_pid(p, p.stem.split("-")[0]) for p in run.glob("slurm*.pid")):
                _log("slurm.conf changed: restarting the daemons")
                stop(prefix)
            conf.write_text(text)
        ensure_munge(run, log_dir)

        def died() -> None:
            for name in ("slurmctld", *(f"slurmd-{n}" for n in NODES)):
                pidfile = run / f"{name}.pid"
                if pidfile.is_file() and pidfile.stat().st_size and not _pid(pidfile, name.split("-")[0]):
                    raise ClusterError(f"{name} died during start-up")

        # -c: an empty queue, so jobs of an earlier (killed) cluster are not run again
        _daemon("slurmctld", run / "slurmctld.pid", ["slurmctld", *([] if keep_state else ["-c"]), "-f", str(conf)],
                log_dir, conf)
        _wait("slurmctld to answer `scontrol ping`", lambda: _ctld_answers(conf), timeout, died)
        for node in NODES:
            _daemon(f"slurmd-{node}", run / f"slurmd-{node}.pid", ["slurmd", "-N", node, "-f", str(conf)], log_dir, conf)
        _wait(f"nodes {', '.join(NODES)} to be ready",
              lambda: all(_node_states(conf).get(n) in READY_STATES for n in NODES), timeout, died)
    except (ClusterError, OSError, KeyError) as exc:
        raise ClusterError(f"local SLURM cluster in {prefix}: {exc}\n{_diagnose(prefix)}") from exc
    (prefix / "env.sh").write_text(f"export SLURM_CONF={conf}\n")
    _log(f"cluster up in {time.time() - t0:.1f} s: {_node_states(conf)}")
    return conf


def _stepd_trees(conf: Path) -> list[int]:
    """slurmstepd processes of this cluster (their environment names its slurm.conf) and all below them."""
    parent: dict[int, int] = {}
    roots = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            stat = (d / "stat").read_text()
            parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if _alive(pid, "slurmstepd") and f"SLURM_CONF={conf}".encode() in (d / "environ").read_bytes().split(b"\0"):
                roots.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    doomed = set(roots)
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in doomed and p not in doomed}
        doomed |= new
        grew = bool(new)
    return sorted(doomed)


def stop(prefix: str | Path = DEFAULT_PREFIX) -> int:
    """Cancel the cluster's jobs, stop its daemons (and munged if `start` started it); returns how many
    processes were stopped. Fine to call when nothing runs."""
    prefix = Path(prefix).absolute()
    run, conf = prefix / "run", prefix / "slurm.conf"
    stopped = 0
    if _pid(run / "slurmctld.pid", "slurmctld") and conf.is_file():
        env = _env(conf)
        try:
            jobs = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=20,
                                  env=env).stdout.split()
            if jobs:
                _log(f"cancelling job(s) {' '.join(jobs)}")
                subprocess.run(["scancel", *jobs], capture_output=True, timeout=20, env=env)
                deadline = time.time() + 60  # KillWait is 30 s
                while time.time() < deadline and subprocess.run(
                        ["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=20, env=env).stdout.strip():
                    time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for name in (*(f"slurmd-{n}" for n in NODES), "slurmctld"):
        pidfile = run / f"{name}.pid"
        pid = _pid(pidfile, name.split("-")[0])
        if pid:
            _terminate(pid, name.split("-")[0])
            stopped += 1
        pidfile.unlink(missing_ok=True)
    leftovers = _stepd_trees(conf)
    if leftovers:  # job steps whose slurmctld was already gone; slurmstepd ignores SIGTERM
        _log(f"killing leftover job steps: {' '.join(map(str, leftovers))}")
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped += len(leftovers)
    pid = _pid(run / "munged.pid", "munged")
    if pid:
        _terminate(pid, "munged")
        stopped += 1
    (run / "munged.pid").unlink(missing_ok=True)
    _log(f"stopped {stopped} process(es); logs kept in {prefix / 'log'}" if stopped else f"nothing ran for {prefix}")
    return stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alm.launch.local_slurm", description="A local two-node SLURM cluster.")
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("prefix", nargs="?", default=DEFAULT_PREFIX)
    p.add_argument("--port-base", type=int, help=f"first of three ports (default $SLURM_LOCAL_PORT_BASE or {DEFAULT_PORT_BASE})")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemons")
    p.add_argument("--keep-state", action="store_true", help="recover the jobs queued in PREFIX/state")
    a = p.parse_args(argv)
    try:
        if a.action == "start":
            conf = start(a.prefix, a.port_base, a.timeout, a.keep_state)
            print(f"export SLURM_CONF={conf}")
        else:
            stop(a.prefix)
    except ClusterError as exc:
        print(f"local_slurm {a.action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
