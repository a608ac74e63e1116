#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

chmod +x ./run.sh
exec ./run.sh 'arg with space' '$HOME' 'it'"'"'s' 'a"b' '*' '' '--x=1;rm -rf /' '$(id)'
