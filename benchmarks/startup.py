"""How long `cloudsend --help` takes against a bare click group's --help, same interpreter.

Target: ratio <= 1.5 (imports stay lazy: no pydantic, fabric, rich, pulumi or boto3 at --help).
Prints figures; not a test.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

BARE = """
import click
@click.group()
def cli():
    "A bare group."
@cli.command()
def run():
    "Run."
cli.main(args=["--help"], prog_name="bare", standalone_mode=False)
"""
CLOUDSEND = "from cloudsend.cli import main; main(['--help'])"


def timed(code: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    timed(CLOUDSEND, 2)  # warm the page cache and .pyc files
    bare = statistics.median(timed(BARE, runs))
    ours = statistics.median(timed(CLOUDSEND, runs))
    print(f"bare click --help : {bare * 1000:7.1f} ms (median of {runs})")
    print(f"cloudsend --help  : {ours * 1000:7.1f} ms (median of {runs})")
    print(f"ratio             : {ours / bare:7.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
