"""Summarise a column of numbers.csv on a bootstrap sample seeded by the job id."""

import argparse
import os
import statistics

from tabulate import tabulate

from helpers import bootstrap_sample, read_column

parser = argparse.ArgumentParser()
parser.add_argument("--column", required=True)
parser.add_argument("--title", default="stats")
args = parser.parse_args()

job_id = os.environ.get("CLOUDSEND_JOB_ID", "local")
values = bootstrap_sample(read_column("numbers.csv", args.column), seed=job_id)
rows = [
    ["n", len(values)],
    ["mean", round(statistics.mean(values), 3)],
    ["stdev", round(statistics.stdev(values), 3)],
    ["min", min(values)],
    ["max", max(values)],
]
report = f"{args.title} ({job_id})\n" + tabulate(rows, headers=["stat", "value"])
with open("report.txt", "w") as fh:
    fh.write(report + "\n")
print(report)
