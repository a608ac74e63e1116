"""Uploaded next to stats.py: imported by it from the job's work dir."""

import csv
import random


def read_column(path, column):
    with open(path, newline="") as fh:
        return [float(row[column]) for row in csv.DictReader(fh)]


def bootstrap_sample(values, seed):
    rng = random.Random(seed)
    return [rng.choice(values) for _ in values]
