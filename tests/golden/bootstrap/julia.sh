#!/usr/bin/env bash
# cloudsend environment bootstrap: jl
# Run by the host agent as `bash bootstrap.sh` with cwd=$CLOUDSEND_ENV_DIR (ROOT/envs/<env_id>)
# and CLOUDSEND_ROOT set. Everything it needs is embedded below: the env_id is a hash of this
# text, so the environment is rebuilt exactly when its content changes.
# Steps: apt -> conda -> pypi -> julia -> command; the last one writes ./activate.
set -euo pipefail

: "${CLOUDSEND_ENV_DIR:?cloudsend: CLOUDSEND_ENV_DIR is not set (the host agent sets it)}"
: "${CLOUDSEND_ROOT:?cloudsend: CLOUDSEND_ROOT is not set (the host agent sets it)}"
cd "$CLOUDSEND_ENV_DIR"

CS_STEP=start
CS_PYTHON=""
cs_log() { printf '==> cloudsend [%s] %s\n' "$CS_STEP" "$*"; }
# One clear line on stderr, then a non-zero exit: the log tail becomes the jobs' abort reason.
cs_die() { printf 'cloudsend: %s\n' "$1" >&2; exit "${2:-1}"; }
cs_on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf 'cloudsend: bootstrap of environment %s failed in step %s (exit code %s)\n' \
      jl "$CS_STEP" "$rc" >&2
  fi
}
trap cs_on_exit EXIT
# A python3 venv, or a clear message when the host's python3 cannot make one (Debian and
# Ubuntu ship the venv module separately, as python3-venv).
cs_make_venv() {
  command -v python3 >/dev/null 2>&1 \
    || cs_die "python3 is not installed on this host; add python3 to env_aptget"
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || cs_die "python3's venv module is missing on this host; add python3-venv to env_aptget"
  rm -rf "$1"
  python3 -m venv "$1"
}

# A retried bootstrap (after a failure) starts over: jobs only ever see a complete env.
rm -f activate activate.tmp
cs_log "building environment" jl "in $CLOUDSEND_ENV_DIR"

# --- julia: Example JSON
CS_STEP=julia
command -v julia >/dev/null 2>&1 \
  || cs_die "julia is not installed on this host; add it with env_aptget or a command" 3
export JULIA_PROJECT="$CLOUDSEND_ENV_DIR/julia"
mkdir -p "$JULIA_PROJECT"
cs_log "Pkg.add" Example JSON "into $JULIA_PROJECT"
# Package names go in as ARGS, never spliced into Julia source.
julia --startup-file=no -e 'using Pkg; Pkg.add(ARGS)' Example JSON

# --- activate: what a job sources before it runs (absolute paths, written last and
# atomically, so its presence means the environment is complete)
CS_STEP=activate
{
  printf '# cloudsend environment %s: `source` this file to use it\n' jl
  if [ -n "$CS_PYTHON" ]; then printf 'export CLOUDSEND_PYTHON=%q\n' "$CS_PYTHON"; fi
  printf 'export JULIA_PROJECT=%q\n' "$JULIA_PROJECT"
} > activate.tmp
mv -f activate.tmp activate
cs_log "environment ready"
