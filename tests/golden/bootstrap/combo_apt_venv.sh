#!/usr/bin/env bash
# cloudsend environment bootstrap: web app
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
      'web app' "$CS_STEP" "$rc" >&2
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
cs_log "building environment" 'web app' "in $CLOUDSEND_ENV_DIR"

# --- apt: python3-venv
CS_STEP=apt
cs_apt_wanted=(python3-venv)
cs_apt_missing=()
for cs_p in "${cs_apt_wanted[@]}"; do
  # Already installed packages need neither root nor the dpkg lock.
  if ! dpkg-query -W -f='${Status}' "$cs_p" 2>/dev/null | grep -q 'install ok installed'; then
    cs_apt_missing+=("$cs_p")
  fi
done
if [ "${#cs_apt_missing[@]}" -eq 0 ]; then
  cs_log "already installed: ${cs_apt_wanted[*]}"
else
  command -v apt-get >/dev/null 2>&1 \
    || cs_die "env_aptget needs apt-get, which this host does not have (not Debian/Ubuntu?)"
  if [ "$(id -u)" -eq 0 ]; then
    cs_sudo=""
  else
    command -v sudo >/dev/null 2>&1 \
      || cs_die "env_aptget needs root: this host runs as $(id -un) and has no sudo"
    sudo -n true >/dev/null 2>&1 \
      || cs_die "env_aptget needs root: sudo asks $(id -un) for a password on this host (allow NOPASSWD sudo)"
    cs_sudo="sudo -n"
  fi
  # Wait for the dpkg lock (cloud-init and unattended-upgrades hold it after boot).
  cs_apt() {
    $cs_sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get -q -o DPkg::Lock::Timeout=300 "$@"
  }
  # `apt-get update` ignores DPkg::Lock::Timeout for the lists lock (apt 2.6 fails at once):
  # retry while the failure is that lock, for as long as install would wait.
  cs_apt_update() {
    local deadline=$((SECONDS + 300)) out
    while :; do
      if out=$(cs_apt update 2>&1); then
        printf '%s\n' "$out"
        touch "$cs_apt_stamp"
        return 0
      fi
      printf '%s\n' "$out"
      case "$out" in
        *"Could not get lock"*|*"Unable to lock"*) ;;
        *) return 1 ;;
      esac
      [ "$SECONDS" -lt "$deadline" ] || return 1
      cs_log "the apt lists are locked by another process: waiting"
      sleep 3
    done
  }
  # `apt-get update` once per host: a stamp under CLOUDSEND_ROOT says when it last ran.
  cs_apt_stamp="$CLOUDSEND_ROOT/apt-update.stamp"
  cs_apt_fresh=""
  if [ -n "$(find "$cs_apt_stamp" -mmin -360 2>/dev/null)" ]; then
    cs_log "package lists are recent (apt-get update skipped)"
  else
    cs_log "apt-get update"
    cs_apt_update || cs_die "apt-get update failed (see above)"
    cs_apt_fresh=1
  fi
  cs_log "apt-get install ${cs_apt_missing[*]}"
  if ! cs_apt install -y --no-install-recommends "${cs_apt_missing[@]}"; then
    [ -z "$cs_apt_fresh" ] || cs_die "apt-get install ${cs_apt_missing[*]} failed (see above)"
    # The lists may have gone stale since the stamp (a 404 from the mirror): refresh once.
    cs_log "install failed with cached package lists: apt-get update and retry"
    cs_apt_update || cs_die "apt-get update failed (see above)"
    cs_apt install -y --no-install-recommends "${cs_apt_missing[@]}" \
      || cs_die "apt-get install ${cs_apt_missing[*]} failed (see above)"
  fi
fi

# --- pypi: requirements.txt
CS_STEP=pypi
CS_VENV="$CLOUDSEND_ENV_DIR/venv"
cs_log "python3 -m venv $CS_VENV"
cs_make_venv "$CS_VENV"
export VIRTUAL_ENV="$CS_VENV"
export PATH="$CS_VENV/bin:$PATH"
CS_PIP_PYTHON="$CS_VENV/bin/python"
CS_PYTHON="$CS_PIP_PYTHON"
cat > "$CLOUDSEND_ENV_DIR/requirements.txt" <<'CLOUDSEND_EOF_ef7b694825461e304467'
six==1.16.0  # pinned
# from more.txt
attrs>=23
CLOUDSEND_EOF_ef7b694825461e304467
cs_log "pip install"
"$CS_PIP_PYTHON" -m pip install --no-input --disable-pip-version-check -r requirements.txt

# --- command (inline)
CS_STEP=command
cs_log "bash -c <the environment's command>"
bash -c 'make -C /opt/x'

# --- activate: what a job sources before it runs (absolute paths, written last and
# atomically, so its presence means the environment is complete)
CS_STEP=activate
{
  printf '# cloudsend environment %s: `source` this file to use it\n' 'web app'
  printf 'export VIRTUAL_ENV=%q\n' "$CS_VENV"
  printf 'export PATH=%q:"$PATH"\n' "$CS_VENV/bin"
  if [ -n "$CS_PYTHON" ]; then printf 'export CLOUDSEND_PYTHON=%q\n' "$CS_PYTHON"; fi
} > activate.tmp
mv -f activate.tmp activate
cs_log "environment ready"
