#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

exec bash -c 'printf '"'"'%s\n'"'"' '"'"'a b'"'"' '"'"'$HOME'"'"' "$CLOUDSEND_MARK"; exit 4'
