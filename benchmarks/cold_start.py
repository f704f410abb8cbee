"""Cold start: ``bmsbi infer`` on a saved posterior, each call a fresh Python process.

Issue 16: every new process used to compile the posterior's sampler again. With JAX's
persistent compilation cache (:func:`bmsbi.enable_compilation_cache`, on in the CLI) the
first call in an empty cache compiles and writes the cache, the next ones read it. Timed,
per repeat, each in a new process and in this order:

- ``cache off``: ``BMSBI_COMPILATION_CACHE=0`` (what every call cost before the cache);
- ``first``: an empty cache folder (a fresh temporary one per repeat);
- ``second``, ``third``: the same folder again;
- ``import bmsbi``: ``python -c "import bmsbi"``, and ``python -c pass`` (interpreter start).

Wall seconds are measured from outside (start to exit of the child, Python start-up
included); CPU seconds (user + system of the child) are given beside them because the
machine is shared. Every row is the median (min-max) over ``--repeats``. The outputs of the
first, second and third call must be identical (the cache changes nothing but time).

    python benchmarks/cold_start.py --demo /tmp/cs-demo            # posterior + recording of `bmsbi demo`
    python benchmarks/cold_start.py --posterior p.bmsbi --recording r.npy --repeats 5

Without a posterior in ``--demo`` the script runs ``bmsbi demo --out DEMO --quiet`` first
(about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


_FIRST_ON_PATH: list = []  # --pythonpath


def _env(cache) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(_FIRST_ON_PATH + [str(ROOT)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a user's own jax cache would be kept by bmsbi
    env["BMSBI_COMPILATION_CACHE"] = str(cache)
    return env


def _run(cmd, env) -> tuple[float, float, str]:
    """``(wall s, cpu s, stdout)`` of one child process; fails loudly on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)  # `-m` puts the cwd first
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def _entries(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="bmsbi-demo",
                    help="folder of `bmsbi demo` (posterior.bmsbi, recording.npy); made if missing")
    ap.add_argument("--posterior", default=None, help="posterior file (default: DEMO/posterior.bmsbi)")
    ap.add_argument("--recording", default=None, help="recording file (default: DEMO/recording.npy)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row (default: %(default)s)")
    ap.add_argument("--pythonpath", default=None,
                    help="a folder put first on the children's PYTHONPATH (to time another version of a "
                         "dependency, e.g. an unpacked wheel)")
    args = ap.parse_args(argv)
    if args.pythonpath:
        _FIRST_ON_PATH[:] = [str(Path(args.pythonpath).resolve())]
    if args.repeats < 1:
        raise SystemExit("--repeats: expected a positive integer")
    demo = Path(args.demo)
    posterior = Path(args.posterior or demo / "posterior.bmsbi").resolve()
    recording = Path(args.recording or demo / "recording.npy").resolve()
    py = sys.executable
    if not posterior.exists():
        if args.posterior is not None:
            raise SystemExit(f"--posterior: no such file: {posterior}")
        print(f"no posterior in {demo}: running bmsbi demo first", file=sys.stderr)
        subprocess.run([py, "-m", "bmsbi.cli", "demo", "--out", str(demo.resolve()), "--quiet"], env=_env(0),
                       check=True, cwd=ROOT)

    versions = _run([py, "-c", "import jax, ml_dtypes, numpy; print(f'jax {jax.__version__}, ml_dtypes "
                          "{ml_dtypes.__version__}, numpy {numpy.__version__}')"], _env(0))[2].strip()
    infer = [py, "-m", "bmsbi.cli", "infer", str(posterior), str(recording)]
    rows = {name: [] for name in ("cache off", "first (empty cache)", "second", "third", "import bmsbi",
                                  "python -c pass")}
    entries, outputs_equal = [], True
    with tempfile.TemporaryDirectory(prefix="bmsbi-cold-start-") as tmp:
        for r in range(args.repeats):
            cache = Path(tmp) / f"cache{r}"
            wall, cpu, off_out = _run(infer, _env(0))
            rows["cache off"].append((wall, cpu))
            outs = []
            for name in ("first (empty cache)", "second", "third"):
                wall, cpu, out = _run(infer, _env(cache))
                rows[name].append((wall, cpu))
                outs.append(out)
                if name.startswith("first"):
                    entries.append(_entries(cache))
            outputs_equal &= len(set(outs + [off_out])) == 1
            rows["import bmsbi"].append(_run([py, "-c", "import bmsbi"], _env(0))[:2])
            rows["python -c pass"].append(_run([py, "-c", "pass"], _env(0))[:2])
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in rows.items()),
                  file=sys.stderr)

    def cell(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    first = f"; {args.pythonpath} first on PYTHONPATH" if args.pythonpath else ""
    print(f"`{' '.join(['python', '-m', 'bmsbi.cli', 'infer', str(posterior), str(recording)])}`, "
          f"each in a new process; {args.repeats} repeats{first}; Python {platform.python_version()}, {versions}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| run | wall s, median (min-max) | CPU s (user+sys), median (min-max) |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {cell([w for w, _ in values])} | {cell([c for _, c in values])} |")
    print(f"\ncache entries written by the first call: {', '.join(map(str, entries))}; outputs of "
          f"cache off / first / second / third identical: {'yes' if outputs_equal else 'NO'}")
    return 0 if outputs_equal else 1


if __name__ == "__main__":
    sys.exit(main())
