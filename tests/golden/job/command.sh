#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

# The command runs in this shell (no second bash to start: it is most of a short job's cost),
# with the shell options of a plain `bash -c`.
set +euo pipefail
eval 'printf '"'"'%s\n'"'"' '"'"'a b'"'"' '"'"'$HOME'"'"' "$CLOUDSEND_MARK"; exit 4'
