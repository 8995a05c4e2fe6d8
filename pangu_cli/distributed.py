"""Running under MindSpore's own launcher, `msrun`: which rank this process is, its device, a barrier,
and `pangu batch --workers N`, which starts msrun itself on one machine.

    msrun --worker_num 2 --local_worker_num 2 --master_port 8118 --log_dir logs --join True \\
        "$(python -c 'import pangu_cli, os; print(os.path.dirname(pangu_cli.__file__))')/__main__.py" \\
        batch prompts.txt --out shared/out

Every rank learns its rank and the world size from `mindspore.communication` (msrun's workers carry
MS_ROLE=MS_WORKER), binds the card of its local rank (DEVICE_ID), and takes every n-th prompt
(`batch.shard`), writing its own manifest part into the shared output folder. Nothing here imports
MindSpore until a worker joins.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pangu_cli.errors import UsageError

MAX_WORKERS = 64


@dataclass(frozen=True)
class Rank:
    rank: int
    size: int
    local_rank: int

    @property
    def shard(self) -> str:
        """This rank's part in `pangu batch --shard` terms (1-based)."""
        return f"{self.rank + 1}/{self.size}"

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_msrun(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("MS_ROLE") == "MS_WORKER"


def join(device: str, precision: str = "fp32") -> Rank:
    """Set MindSpore up on this worker's own card and join the others; returns this process's rank.
    In msrun's scheduler process it only joins (no card is opened) and never returns."""
    if under_scheduler():
        from mindspore.communication import init

        init()
        raise SystemExit(0)  # not reached: the scheduler ends the process when the job ends
    from pangu_cli import runtime

    local = os.environ.get("DEVICE_ID", "")
    runtime.setup(device=device, precision=precision, device_id=int(local) if local.isdigit() else None)
    from mindspore.communication import get_group_size, get_local_rank, get_rank, init

    init()
    return Rank(get_rank(), get_group_size(), get_local_rank())


def under_scheduler(environ: Mapping[str, str] | None = None) -> bool:
    """msrun also runs the command in its scheduler process, which must only join (and never returns)."""
    environ = os.environ if environ is None else environ
    return environ.get("MS_ROLE") == "MS_SCHED"


def join_if_launched(device: str, precision: str = "fp32") -> Rank | None:
    """This process's rank when msrun started it (joining the others), else None."""
    if under_msrun() or under_scheduler():
        return join(device, precision)
    return None


def all_reduce_sum(value: float) -> float:
    """The sum of `value` over every rank (also a barrier). MindSpore 2.10 has no CPU kernel for Barrier,
    and only the `ops.AllReduce` primitive runs on CPU (not `comm_func.all_reduce`)."""
    import mindspore as ms
    from mindspore import ops

    return float(ops.AllReduce()(ms.Tensor([float(value)], ms.float32)).asnumpy()[0])


def barrier() -> None:
    """Wait for every rank."""
    all_reduce_sum(1.0)


def check_shared_folder(folder: str | Path, rank: Rank) -> None:
    """Every rank writes a mark into `folder`; after a barrier each looks for all marks. A folder that is
    not the same place for every rank (a local path on several machines) is then a one-line error on
    every rank, before any image is drawn."""
    import random

    # A token of this run (rank 0's random number, summed with zeros): marks of an earlier run never count.
    token = int(all_reduce_sum(random.SystemRandom().randrange(1, 2**23) if rank.main else 0))
    marks = Path(folder) / ".pangu" / "ranks"
    marks.mkdir(parents=True, exist_ok=True)
    mine = marks / f"{token}-rank-{rank.rank}-of-{rank.size}"
    mine.write_text(socket.gethostname(), encoding="utf-8")
    barrier()
    missing = [r for r in range(rank.size) if not (marks / f"{token}-rank-{r}-of-{rank.size}").is_file()]
    barrier()  # nobody removes its mark before every rank has looked
    mine.unlink(missing_ok=True)
    if missing:
        raise UsageError(f"the output folder {folder} is not shared by every rank (rank {rank.rank} cannot see "
                         f"rank {missing[0]}'s files)", "give --out a folder on storage every machine mounts")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port(port: int) -> None:
    if not 1024 <= port <= 65535:
        raise UsageError(f"port {port} is out of range", "give --port between 1024 and 65535, or leave it out")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            raise UsageError(f"port {port} is in use", "pick another with --port, or leave it out") from None


def check_workers(workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {workers} is out of range", f"give 1 to {MAX_WORKERS} workers")


def _search_path() -> str:
    # msrun starts its workers with the `python` it finds on PATH: this environment's first.
    return str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


def msrun_command(workers: int, port: int, log_dir: Path, entry: Path, argv: list[str]) -> list[str]:
    """The msrun command line that runs `entry ARGV` on `workers` local workers, no log on the console."""
    check_workers(workers)
    launcher = shutil.which("msrun", path=_search_path())
    if launcher is None:
        raise UsageError("msrun (MindSpore's launcher) was not found", "install MindSpore in this environment")
    return [launcher, f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={port}",
            f"--log_dir={log_dir}", "--join=True", f"--tail_worker_log={MAX_WORKERS + 1}", str(entry), *argv]


ENTRY = "from pangu_cli.cli import main\n\nmain()\n"


def launch(workers: int, port: int | None, folder: Path, argv: list[str]):
    """Start `pangu ARGV` under msrun on this machine; returns the running process and its log folder.

    The entry script lives in the output folder (not in the package, whose folder would shadow modules
    when run as a script)."""
    port = free_port() if port is None else port
    check_port(port)
    home = Path(folder) / ".pangu" / "msrun"
    logs = home / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    entry = home / "entry.py"
    entry.write_text(ENTRY, encoding="utf-8")
    import subprocess

    command = msrun_command(workers, port, logs, entry, argv)
    # The workers import pangu_cli from where this process did, installed or not.
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PATH": _search_path(),
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with open(logs / "msrun.log", "wb") as launcher_log:
        process = subprocess.Popen(command, env=env, stdout=launcher_log, stderr=subprocess.STDOUT)
    return process, logs


def worker_records(logs: Path) -> list[dict]:
    """The JSON records the workers printed (each image once), from their log files."""
    import json

    records = []
    for log in sorted(logs.glob("worker_*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "path" in record:
                    records.append(record)
    return records


__all__ = ["Rank", "all_reduce_sum", "barrier", "join_if_launched", "check_port", "check_shared_folder", "check_workers", "free_port", "join", "launch",
           "msrun_command", "under_msrun", "under_scheduler", "worker_records"]
