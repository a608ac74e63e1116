#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

command -v julia >/dev/null 2>&1 || {
  echo "cloudsend: julia is not installed on this host; add it with env_aptget or a command" >&2
  exit 127
}
exec julia sim.jl 'arg with space' '$HOME' 'it'"'"'s' 'a"b' '*' '' '--x=1;rm -rf /' '$(id)'
