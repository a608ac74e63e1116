#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

# environment e-1dc07e2c6114
: "${CLOUDSEND_ENV_DIR:?cloudsend: CLOUDSEND_ENV_DIR is not set (the host agent sets it)}"
if [ ! -f "$CLOUDSEND_ENV_DIR/activate" ]; then
  echo "cloudsend: environment $CLOUDSEND_ENV_DIR is not ready (no activate file)" >&2
  exit 1
fi
source "$CLOUDSEND_ENV_DIR/activate"

# The script is a symlink into the host's file store, and python puts the symlink's *target*
# dir on sys.path: add the work dir so modules uploaded beside the script import.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${CLOUDSEND_PYTHON:-python3}" show.py one
