"""Start-up time of the light `pangu` commands (they must not import MindSpore; target <= 0.3 s).

Each command runs N times as a fresh process (the installed `pangu` script when there is one, else
`python -m pangu_cli`); the table shows the median and the fastest wall time and the median CPU time
(user + system: what the process itself spent, a steadier figure on a busy machine), next to a bare
`python -c pass` for the interpreter's own share. With --imports, each command is run once more under
`python -X importtime` and its most expensive imports (cumulative, top-level packages) are listed.

    python bench/startup.py                 # table, 15 runs per command
    python bench/startup.py --runs 30 --imports 8
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.3
COMMANDS = {
    "pangu --help": ["--help"],
    'pangu detect "一只猫 on the sofa"': ["detect", "一只猫 on the sofa"],
    "pangu ratios": ["ratios"],
    "pangu presets": ["presets"],
    "pangu --version": ["--version"],
}
HEAVY = ("mindspore", "torch", "transformers", "numpy", "PIL", "jieba", "safetensors")


def launcher() -> list[str]:
    script = shutil.which("pangu", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pangu_cli"]


def environment(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PANGU_MODEL"}
    env.update(XDG_CONFIG_HOME=config, PYTHONPATH=str(ROOT), COLUMNS="120")
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timings(argv: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of each run."""
    subprocess.run(argv, env=env, capture_output=True, check=True)  # warm: page cache, jieba's cache
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = _children_cpu(), time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return walls, cpus


def import_costs(args: list[str], env: dict[str, str], top: int) -> tuple[list[tuple[float, str]], float]:
    """The import time of one run of `pangu ARGS`, summed per top-level package (self times, so nothing
    is counted twice): [(seconds, package)] costliest first, and the total."""
    code = "import sys; from pangu_cli.cli import main; main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], env=env,
                          capture_output=True, text=True)
    per_package: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|")
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + int(self_us) / 1e6
    ranked = sorted(((t, p) for p, t in per_package.items()), reverse=True)
    return ranked[:top], sum(per_package.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--imports", type=int, default=6, metavar="N",
                        help="list the N costliest imports of each command (0: skip)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as config:
        env = environment(config)
        base = launcher()
        print(f"launcher: {' '.join(base)}   runs: {options.runs}   cpus: {os.cpu_count()}   "
              f"python {sys.version.split()[0]}")
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        rows = [("python -c pass", *timings([sys.executable, "-c", "pass"], options.runs, env))]
        rows += [(name, *timings(base + args, options.runs, env)) for name, args in COMMANDS.items()]
        print(f"\n{'command':<34} {'wall median':>11} {'wall min':>9} {'CPU median':>11}   target {TARGET_S} s (wall)")
        for name, walls, cpus in rows:
            median = statistics.median(walls)
            verdict = "" if name.startswith("python") else ("ok" if median <= TARGET_S else "SLOW")
            print(f"{name:<34} {median:>10.3f}s {min(walls):>8.3f}s {statistics.median(cpus):>10.3f}s   {verdict}")

        if options.imports:
            print("\nimport time per top-level package (python -X importtime, self times summed, one run):")
            for name, args in COMMANDS.items():
                costs, total = import_costs(args, env, options.imports)
                heavy = sorted(p for _, p in costs if p in HEAVY)
                print(f"\n{name}: {total * 1000:.0f} ms of imports" + (f"; loads {', '.join(heavy)}" if heavy else ""))
                for seconds, package in costs:
                    print(f"  {seconds * 1000:7.1f} ms  {package}")


if __name__ == "__main__":
    main()
