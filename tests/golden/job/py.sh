#!/usr/bin/env bash
# cloudsend job script: run by the host agent as `bash ../run.sh` with cwd = the job's work
# dir, where the job's script and files are linked under their basenames.
set -euo pipefail

# The script is a symlink into the host's file store, and python puts the symlink's *target*
# dir on sys.path: add the work dir so modules uploaded beside the script import.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${CLOUDSEND_PYTHON:-python3}" 'train model.py' 'arg with space' '$HOME' 'it'"'"'s' 'a"b' '*' '' '--x=1;rm -rf /' '$(id)'
