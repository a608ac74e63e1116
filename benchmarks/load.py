"""Loading a config must grow linearly with its size: a long command and many jobs.

What `validate` and `run` do before anything is deployed: read and check the file
(`load_config`), the provider's checks (`check_config`), and build the plan (`build_plan`:
job ids, rendered job scripts). Measured for a 1 MB and a 10 MB `run_command` (and
`run_script` arguments), and for 10 000 and 100 000 jobs (`repeat`). Figures are printed as
ratios against the smaller case of the same run: time per MB (or per 1 000 jobs) at 10x the
size over the same at 1x. Linear growth gives ratios near 1; quadratic gives ~10.
Target: every ratio <= 2. Prints figures; not a test.
"""

from __future__ import annotations

import functools
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

MB = 1 << 20


def _write(folder: Path, name: str, doc: Mapping[str, object]) -> Path:
    path = folder / name
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(doc, Dumper=dumper, width=1 << 30))
    return path


def _command(size: int) -> str:
    # a long quoted argument and many short words, as a generated command line has
    quoted = "'" + "x" * (size // 2) + "'"
    words = " ".join(f"f{i:06d}.dat" for i in range(size // 2 // 12))
    return f"python3 -c 'import sys' {quoted} {words}"


def _load_and_plan(path: Path) -> None:
    from cloudsend.config import load_config
    from cloudsend.pipeline.files import FileIndex
    from cloudsend.pipeline.plan import build_plan
    from cloudsend.providers import check_config

    config = load_config(path)
    check_config(config)
    build_plan(config, FileIndex())


def _timed(action: Callable[[], None], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()  # what the previous case left does not land in this one's figure
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="cloudsend-bench-") as tmp:
        folder = Path(tmp)
        (folder / "task.py").write_text("print('hi')\n")
        cases: list[tuple[str, str, str, list[tuple[float, Path]]]] = []
        for key, what in (("run_command", "command"), ("run_script", "script args")):
            files = []
            for mb in (1, 10):
                text = _command(mb * MB)
                if key == "run_script":
                    text = "task.py " + text
                doc = {"provider": "local", "jobs": [{key: text}]}
                files.append((float(mb), _write(folder, f"{key}-{mb}.yaml", doc)))
            cases.append((what, "MB", "per MB", files))
        files = []
        for thousands in (10, 100):
            jobs = [{"run_command": f"echo {i}", "repeat": thousands * 100} for i in range(10)]
            doc = {"provider": "local", "jobs": jobs}
            files.append((float(thousands), _write(folder, f"jobs-{thousands}k.yaml", doc)))
        cases.append(("jobs", "k jobs", "per 1000 jobs", files))

        _load_and_plan(files[0][1])  # imports and caches warm
        print(f"load_config + check_config + build_plan, best of {runs}")
        for label, unit, per, ((small, small_path), (big, big_path)) in cases:
            t_small = _timed(functools.partial(_load_and_plan, small_path), runs)
            t_big = _timed(functools.partial(_load_and_plan, big_path), runs)
            per_small, per_big = t_small / small, t_big / big
            print(
                f"{label:12}: {small:4.0f} {unit:6} {t_small * 1000:7.1f} ms,"
                f" {big:4.0f} {unit:6} {t_big * 1000:7.1f} ms;"
                f" time {per} at 10x / at 1x: {per_big / per_small:4.2f}  (target <= 2)"
            )


if __name__ == "__main__":
    main()
