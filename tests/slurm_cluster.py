"""A one-node Slurm cluster on this machine, for the launcher tests.

`start_cluster(folder)` writes a minimal `slurm.conf` into `folder` (temp state, spool, pid and
log files; localhost only; accounting off; short credential lifetime and scheduler interval so a
requeued job restarts in seconds), starts `munged` if no munge daemon answers, then `slurmctld`
and `slurmd` as background processes, and waits until the node is idle. `Cluster.stop()` stops
exactly the processes it started, by pid. Needs root and the Debian packages `slurm-wlm` and
`munge` (scripts/setup.sh installs them in CI); `missing_reason()` says why it cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "scancel")


def missing_reason() -> str | None:
    missing = [name for name in BINARIES if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"Slurm binaries not found ({', '.join(missing)}): apt-get install slurm-wlm "
                "munge (scripts/setup.sh does it as root)")
    if os.geteuid() != 0:
        return "the one-node test cluster runs slurmd as root; not root here"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _munge_answers() -> bool:
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=True).stdout
        subprocess.run(["unmunge"], input=token, capture_output=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _real_memory_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return max(256, int(line.split()[1]) // 1024 // 2)
    return 1024


@dataclass
class Cluster:
    conf: Path
    folder: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def stop(self) -> None:
        self._cancel_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def _cancel_jobs(self, timeout_s: float = 30.0) -> None:
        """Cancel every job of this cluster and wait for the queue to drain: slurmd's job steps
        (slurmstepd) outlive slurmd itself, so a job still running at the end would be left
        behind as orphan processes."""
        if "slurmctld" not in self.processes:
            return
        env = {**os.environ, **self.env}
        subprocess.run([_binary("scancel"), "--full", "--user", str(os.getuid())], env=env,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            queue = subprocess.run([_binary("squeue"), "--noheader"], env=env,
                                   capture_output=True, text=True, timeout=30)
            if queue.returncode != 0 or not queue.stdout.strip():
                return
            time.sleep(0.5)


def _write_conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    cpus = 2
    conf = folder / "slurm.conf"
    (folder / "state").mkdir(parents=True, exist_ok=True)
    (folder / "spool").mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join([
        "ClusterName=harnesstest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "AuthInfo=cred_expire=10",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerParameters=sched_interval=2",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MinJobAge=600",
        "KillWait=2",  # a requeued or cancelled job is SIGKILLed 2 s after SIGTERM
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} "
        "State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def start_cluster(folder: Path, timeout_s: float = 60.0) -> Cluster:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(conf=_write_conf(folder), folder=folder)
    env = {**os.environ, **cluster.env}
    try:
        if not _munge_answers():
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            run_dir.chmod(0o755)  # munged refuses a socket folder that others cannot enter
            for name in ("/var/log/munge", "/var/lib/munge"):
                Path(name).mkdir(parents=True, exist_ok=True)
                shutil.chown(name, "munge", "munge")
            # -F: stay in the foreground so the pid we hold is munged's own.
            process = subprocess.Popen(["runuser", "-u", "munge", "--", _binary("munged"), "-F"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cluster.processes["munged"] = process
            _wait(_munge_answers, 20.0, "munged did not answer")
        for name in ("slurmctld", "slurmd"):
            process = subprocess.Popen([_binary(name), "-D", "-f", str(cluster.conf)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cluster.processes[name] = process
        _wait(lambda: _node_idle(env), timeout_s, f"node not idle; see {folder}/slurm*.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(env: dict) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip().startswith("idle")


def _wait(predicate, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise RuntimeError(message)
