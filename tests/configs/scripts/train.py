"""Fixture script: the config tests only check that it exists."""

import sys

print("train", sys.argv[1:])
