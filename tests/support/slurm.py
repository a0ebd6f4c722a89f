"""A real Slurm cluster on this machine: ``munged``, ``slurmctld`` and compute nodes, each a
network namespace of its own with its own address and hostname running ``slurmd``.

Debian's packages (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``; Slurm 22.05)
started by hand, as on a cluster, with the traps of this machine worked around:

- the controller listens on a bridge (``sp213br``, 10.213.0.1) under this machine's
  hostname, as ``SlurmctldHost`` must name the host it runs on;
- each node's veth end is made under another name and renamed ``eth0`` inside its
  namespace (the host has an ``eth0`` of its own);
- cgroups are v1 on a tmpfs here, so ``cgroup.conf`` points at it and never mounts one,
  processes are tracked through ``/proc`` (``proctrack/linuxproc``);
- ``munged`` runs as ``munge`` with a socket and key of this cluster's own, so it never
  meets the host's.

The nodes share this machine's files (a cluster's shared filesystem: homes, data, the
unpacked environments) and its accounts (a cluster's directory service).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "sbatch", "munged", "ip", "bwrap")


class ClusterError(RuntimeError):
    """The cluster did not come up; the message holds the end of the daemon's log."""


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


@dataclass
class SlurmCluster:
    """A cluster of ``nodes`` two-CPU nodes (``node1``, ``node2``...) in one partition
    ``short`` (at most ``max_minutes`` per job) and a ``long`` one on the same nodes."""

    folder: Path
    nodes: int = 2
    max_minutes: int = 60
    net: int = 213  # 10.<net>.0.0/24, and the names and ports: two clusters can run at once
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def controller_ip(self) -> str:
        return f"10.{self.net}.0.1"

    @property
    def bridge(self) -> str:
        return f"sp{self.net}br"

    def netns(self, n: int) -> str:
        return f"sp{self.net}n{n}"

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment the Slurm commands need to find this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def node_ip(self, n: int) -> str:
        return f"10.{self.net}.0.{10 + n}"

    def names(self) -> list[str]:
        return [f"node{n}" for n in range(1, self.nodes + 1)]

    def start(self) -> SlurmCluster:
        missing = [tool for tool in PACKAGES if shutil.which(tool) is None]
        if missing:
            raise ClusterError(
                f"Slurm tests need {', '.join(missing)}: apt-get install slurmctld slurmd"
                " slurm-client munge iproute2 bubblewrap (scripts/setup.sh test does it)"
            )
        self.stop()
        if self.folder.exists():
            shutil.rmtree(self.folder)
        for sub in ("ctld", "munge", *(f"spool{n}" for n in range(1, self.nodes + 1))):
            (self.folder / sub).mkdir(parents=True)
        self.folder.chmod(0o755)
        try:
            self._network()
            self._munge()
            self._config()
            self._daemon(["slurmctld", "-D", "-f", str(self.conf)], "ctld.log")
            for n, name in enumerate(self.names(), 1):
                slurmd = f"hostname {name}; exec slurmd -D -N {name} -f {self.conf}"
                netns = ["ip", "netns", "exec", self.netns(n), "unshare", "--uts", "sh", "-c"]
                self._daemon([*netns, slurmd], f"slurmd-{name}.log")
            self.wait_idle()
        except BaseException:
            self.stop()  # no daemon outlives a cluster that did not come up
            raise
        return self

    def _network(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.controller_ip}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for n in range(1, self.nodes + 1):
            ns, host_end, node_end = self.netns(n), f"sp{self.net}v{n}", f"sp{self.net}e{n}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
            run("ip", "link", "set", node_end, "netns", ns)
            run("ip", "-n", ns, "link", "set", node_end, "name", "eth0")
            run("ip", "link", "set", host_end, "master", self.bridge)
            run("ip", "link", "set", host_end, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.node_ip(n)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", self.controller_ip)

    def _munge(self) -> None:
        key = self.folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge")
        key.chmod(0o400)
        shutil.chown(self.folder / "munge", "munge", "munge")
        munge = self.folder / "munge"
        run(
            "runuser", "-u", "munge", "--", "munged", f"--socket={munge}/munge.socket",
            f"--key-file={key}", f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed",
        )  # fmt: skip
        munge.chmod(0o755)  # users' sbatch and squeue ask munged for credentials

    def _config(self) -> None:
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={self.node_ip(n)} CPUs=2 RealMemory=8000 State=UNKNOWN"
            for n, name in enumerate(self.names(), 1)
        )
        names = ",".join(self.names())
        d = self.folder
        self.conf.write_text(
            f"""ClusterName=portaltest
SlurmctldHost={socket.gethostname()}({self.controller_ip})
SlurmctldPort={10000 + 10 * self.net}
SlurmdPort={10001 + 10 * self.net}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool%n
SlurmctldPidFile={d}/ctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
SlurmctldTimeout=10
SlurmdTimeout=10
KillWait=5
{nodes}
PartitionName=short Nodes={names} Default=YES MaxTime={self.max_minutes} State=UP
PartitionName=long Nodes={names} MaxTime=INFINITE State=UP
"""
        )
        (d / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nCgroupAutomount=no\n"
        )

    def _daemon(self, argv: list[str], log: str) -> None:
        out = (self.folder / log).open("ab")
        self.processes.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        )

    def wait_idle(self, timeout: float = 60) -> None:
        """Return once every node is idle."""
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            done = run("sinfo", "-h", "-N", "-o", "%N %t", check=False, env=self.env)
            states = done.stdout + done.stderr
            lines = [line.split() for line in done.stdout.splitlines()]
            up = {name for name, state in lines if state == "idle"}
            if done.returncode == 0 and up >= set(self.names()):
                return
            time.sleep(0.5)
        raise ClusterError(f"nodes not idle after {timeout} s: {states}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"== {log.name}\n" + log.read_text(errors="replace")[-2000:]
            for log in sorted(self.folder.glob("*.log"))
        )

    def slurm(self, *argv: str, check: bool = True) -> str:
        """Run a Slurm command (``squeue``, ``scontrol``...) against this cluster."""
        return run(*argv, check=check, env=self.env).stdout

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
        # and those of an earlier run in this folder that was killed before its stop
        run("pkill", "-f", f"(slurmctld|slurmd) -D .*-f {self.conf}$", check=False)
        run("pkill", "-f", f"munged --socket={self.folder}/", check=False)
        for n in range(1, self.nodes + 1):
            run("ip", "netns", "del", self.netns(n), check=False)
            run("ip", "link", "del", f"sp{self.net}v{n}", check=False)
        run("ip", "link", "del", self.bridge, check=False)


__all__ = ["ClusterError", "SlurmCluster"]
