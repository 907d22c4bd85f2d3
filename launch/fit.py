"""Does a job fit the partition? `alm launch slurm` asks `sinfo` before submitting.

SLURM accepts a job whose per-node request (tasks x cpus-per-task, GPUs, memory) no node of the
partition can ever satisfy and leaves it PENDING forever (Reason=PartitionConfig), e.g. the default
--cpus-per-task = data.num_workers + 1 on nodes with fewer cores. So the launcher reads every node
of the target partition (`sinfo -N -o '%N|%P|%c|%m|%G'`) and refuses such a request with what the
nodes have. When sinfo is missing or does not answer, the check is skipped and the launcher says so.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Optional

SINFO_FORMAT = "%N|%P|%c|%m|%G"
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.I)
_MEM_MB = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}


class DoesNotFit(ValueError):
    """No node of the partition can run the job (the message says what the nodes have)."""


@dataclass(frozen=True)
class Node:
    name: str
    partition: str  # without the default marker
    default: bool  # the partition is the cluster's default ('*' in sinfo)
    cpus: int
    mem_mb: int
    gpus: int


def gres_gpus(gres: str) -> int:
    """GPUs in a sinfo %G field: 'gpu:8', 'gpu:a100:4(S:0-1)', 'gpu:2,shard:8', '(null)' -> 8, 4, 2, 0."""
    total = 0
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Lines of `sinfo -h -N -o '%N|%P|%c|%m|%G'`; a node listed twice (two partitions) gives two entries."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.strip().split("|")
        if len(cells) != 5:
            raise ValueError(f"sinfo: unexpected line {line!r} (expected NODE|PARTITION|CPUS|MEMORY|GRES)")
        name, part, cpus, mem, gres = cells
        nodes.append(Node(name, part.rstrip("*"), part.endswith("*"), int(cpus.rstrip("+")), int(mem.rstrip("+")),
                          gres_gpus(gres)))
    return nodes


def mem_mb(value: str) -> Optional[int]:
    """SLURM's --mem (default unit MB; K/M/G/T suffixes); '0' (all of the node's memory) -> None."""
    m = _MEM.match(str(value).strip())
    if not m:
        raise ValueError(f"--mem {value!r}: expected a size such as 200G, 64000M or 0")
    mb = float(m.group(1)) * _MEM_MB[m.group(2).upper()]
    return None if mb == 0 else int(-(-mb // 1))


def _summary(nodes: list[Node]) -> str:
    """'n1, n2: 2 CPUs, 0 GPUs, 21694 MB' grouped by identical nodes."""
    groups: dict[tuple, list[str]] = {}
    for n in nodes:
        groups.setdefault((n.cpus, n.gpus, n.mem_mb), []).append(n.name)
    return "; ".join(f"{', '.join(names)}: {c} CPUs, {g} GPUs, {m} MB" for (c, g, m), names in sorted(groups.items()))


def check_fit(nodes: list[Node], *, partition: Optional[str], nodes_wanted: int, tasks_per_node: int,
              cpus_per_task: Optional[int], gpus_per_node: int, mem: Optional[str]) -> str:
    """Raise DoesNotFit if fewer than `nodes_wanted` nodes of the partition can each hold the per-node
    request; else return the partition's name."""
    if partition:
        mine = [n for n in nodes if n.partition == partition]
        if not mine:
            known = ", ".join(sorted({n.partition for n in nodes})) or "none"
            raise DoesNotFit(f"--partition {partition}: no such partition (sinfo lists: {known})")
    else:
        mine = [n for n in nodes if n.default]
        if not mine:
            raise DoesNotFit("no --partition given and the cluster has no default partition; pass --partition")
        partition = mine[0].partition
    cpt = cpus_per_task or 1
    cpus = tasks_per_node * cpt
    want_mb = mem_mb(mem) if mem not in (None, "") else None
    fits = [n for n in mine if n.cpus >= cpus and n.gpus >= gpus_per_node and (want_mb is None or n.mem_mb >= want_mb)]
    if len(fits) >= nodes_wanted:
        return partition
    ask = f"{tasks_per_node} task(s) x {cpt} CPU(s) = {cpus} CPUs, {gpus_per_node} GPUs"
    ask += f", {want_mb} MB" if want_mb is not None else ""
    hint = []
    if all(n.cpus < cpus for n in mine):
        hint.append("--cpus-per-task (default data.num_workers + 1) or --tasks-per-node")
    if all(n.gpus < gpus_per_node for n in mine):
        hint.append("--gpus-per-node")
    if want_mb is not None and all(n.mem_mb < want_mb for n in mine):
        hint.append("--mem")
    if not hint:
        hint.append("--nodes")
    raise DoesNotFit(
        f"partition {partition}: {nodes_wanted} node(s) needed with {ask} each, but {len(fits)} of its "
        f"{len(mine)} node(s) can hold that ({_summary(mine)}); lower {' / '.join(hint)} (SLURM would leave the job "
        "PENDING with Reason=PartitionConfig)"
    )


def read_sinfo(timeout: float = 20.0) -> tuple[Optional[list[Node]], str]:
    """(nodes, '') from sinfo, or (None, why the check cannot be done)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # sinfo would retry for a minute
        return None, f"SLURM_CONF={conf} does not exist"
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return None, "sinfo not found"
    except subprocess.TimeoutExpired:
        return None, f"sinfo did not answer in {timeout:.0f} s"
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return None, f"sinfo failed: {why}"
    try:
        return parse_sinfo(p.stdout), ""
    except ValueError as exc:
        return None, str(exc)
