#!/usr/bin/env bash
# Runs once per host when the "shell" environment is built.
set -euo pipefail
command -v sha256sum >/dev/null
echo "shell environment ready on $(hostname)"
