#!/usr/bin/env bash
# cloudsend environment bootstrap: conda
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
      conda "$CS_STEP" "$rc" >&2
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
cs_log "building environment" conda "in $CLOUDSEND_ENV_DIR"

# --- conda (env dir): pip=24.0=pyhd8ed1ab_0 python=3.11.7=hab00c5b_0_cpython samtools=1.19=h50ea8bc_0
CS_STEP=conda
CS_CONDA="$CLOUDSEND_ENV_DIR/conda"
# The engine-neutral request every engine installs (the rattler engine reads this file).
cat > "$CLOUDSEND_ENV_DIR/conda-request.json" <<'CLOUDSEND_EOF_d0eba04da8fa400f4bac'
{
  "channel_priority": "disabled",
  "channels": [
    "conda-forge",
    "bioconda"
  ],
  "specs": [
    "pip=24.0=pyhd8ed1ab_0",
    "python=3.11.7=hab00c5b_0_cpython",
    "samtools=1.19=h50ea8bc_0"
  ]
}
CLOUDSEND_EOF_d0eba04da8fa400f4bac
cs_conda_channels=(conda-forge bioconda)
cs_conda_specs=(pip=24.0=pyhd8ed1ab_0 python=3.11.7=hab00c5b_0_cpython samtools=1.19=h50ea8bc_0)
# Engine: CLOUDSEND_CONDA_ENGINE if set, else the first of micromamba, mamba, conda on PATH,
# else py-rattler in a tool venv under CLOUDSEND_ROOT (pip-installable anywhere).
cs_engine="${CLOUDSEND_CONDA_ENGINE:-}"
if [ -z "$cs_engine" ]; then
  for cs_e in micromamba mamba conda; do
    if command -v "$cs_e" >/dev/null 2>&1; then cs_engine="$cs_e"; break; fi
  done
  cs_engine="${cs_engine:-rattler}"
fi
rm -rf "$CS_CONDA"
case "$cs_engine" in
  micromamba|mamba|conda)
    command -v "$cs_engine" >/dev/null 2>&1 \
      || cs_die "CLOUDSEND_CONDA_ENGINE=$cs_engine but $cs_engine is not on this host's PATH"
    cs_args=(create -y -p "$CS_CONDA" --override-channels)
    for cs_c in "${cs_conda_channels[@]}"; do cs_args+=(-c "$cs_c"); done
    cs_log "$cs_engine create -p $CS_CONDA ${cs_conda_specs[*]}"
    "$cs_engine" "${cs_args[@]}" "${cs_conda_specs[@]}"
    ;;
  rattler)
    if [ -n "${CLOUDSEND_RATTLER_PYTHON:-}" ]; then
      # A python that already has py-rattler (air-gapped hosts, tests): no tool venv.
      cs_rattler_python="$CLOUDSEND_RATTLER_PYTHON"
    else
      cs_rattler_tool="$CLOUDSEND_ROOT/tools/rattler"
      cs_rattler_python="$cs_rattler_tool/bin/python"
      if ! "$cs_rattler_python" -c 'import rattler' >/dev/null 2>&1; then
        cs_log "no micromamba, mamba or conda here: installing py-rattler into $cs_rattler_tool"
        cs_make_venv "$cs_rattler_tool"
        "$cs_rattler_python" -m pip install -q --no-input --disable-pip-version-check \
          'py-rattler>=0.28,<0.29' \
          || cs_die "no conda engine on this host (micromamba, mamba or conda) and py-rattler could not be installed into $cs_rattler_tool (see above)"
      fi
    fi
    "$cs_rattler_python" -c 'import rattler' >/dev/null \
      || cs_die "the rattler engine's python ($cs_rattler_python) cannot import rattler"
cat > "$CLOUDSEND_ENV_DIR/rattler_install.py" <<'CLOUDSEND_EOF_a3928a108353b0efb71c'
"""Solve and install a conda prefix with py-rattler: cloudsend's conda engine for hosts that
have no micromamba, mamba or conda. Embedded in bootstrap scripts; run with a python that has
py-rattler (written against py-rattler 0.28's `solve`/`install`).

usage: python rattler_install.py REQUEST.json PREFIX CACHE_DIR
REQUEST.json: {"channels": [...], "specs": [...], "channel_priority": "strict"|"disabled"}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import rattler

# conda's `defaults` is not on conda.anaconda.org, where rattler would look for it by name.
_DEFAULTS = ["https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r"]


def _channels(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for channel in _DEFAULTS if name == "defaults" else [name]:
            if channel not in out:
                out.append(channel)
    return out


async def _build(request: dict, prefix: Path, cache: Path) -> None:
    priority = (
        rattler.ChannelPriority.Disabled
        if request.get("channel_priority") == "disabled"
        else rattler.ChannelPriority.Strict
    )
    records = await rattler.solve(
        sources=_channels(request["channels"]),
        # Parsed leniently, as conda does: rattler's strict parser (used for plain strings)
        # rejects the conda form `name=version=build` that exact pins use.
        specs=[rattler.MatchSpec(spec) for spec in request["specs"]],
        gateway=rattler.Gateway(cache_dir=cache / "repodata"),
        # Without the host's __glibc/__unix/__linux, most conda-forge packages are unsolvable.
        virtual_packages=rattler.VirtualPackage.detect(),
        channel_priority=priority,
    )
    for record in sorted(records, key=lambda r: r.name.normalized):
        print(f"  {record.name.normalized} {record.version} {record.build}  ({record.channel})")
    await rattler.install(
        records,
        target_prefix=prefix,
        cache_dir=cache / "pkgs",
        show_progress=False,
        # No requested_specs: py-rattler 0.28 hands its MatchSpec wrappers to the Rust layer
        # unwrapped and fails ("not an instance of PyMatchSpec"); it is only metadata anyway.
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        asyncio.run(_build(request, Path(argv[1]), Path(argv[2])))
    except Exception as exc:  # the message is the point: solver conflicts, missing packages
        first = str(exc).strip().splitlines() or [type(exc).__name__]
        print(str(exc), file=sys.stderr)
        print(f"cloudsend: conda solve/install with rattler failed: {first[0]}", file=sys.stderr)
        return 1
    print(f"  installed {len(request['specs'])} requested spec(s) into {argv[1]}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # py-rattler 0.28 sometimes crashes (SIGSEGV/SIGABRT) while the interpreter shuts down,
    # after the work is done: leave without running the finaliser.
    os._exit(code)
CLOUDSEND_EOF_a3928a108353b0efb71c
    cs_log "rattler: solve and install ${cs_conda_specs[*]} into $CS_CONDA"
    "$cs_rattler_python" "$CLOUDSEND_ENV_DIR/rattler_install.py" \
      "$CLOUDSEND_ENV_DIR/conda-request.json" "$CS_CONDA" "$CLOUDSEND_ROOT/tools/rattler-cache"
    ;;
  *)
    cs_die "CLOUDSEND_CONDA_ENGINE=$cs_engine: use micromamba, mamba, conda or rattler"
    ;;
esac
export CONDA_PREFIX="$CS_CONDA"
export PATH="$CS_CONDA/bin:$PATH"
if [ -x "$CS_CONDA/bin/python" ]; then CS_PYTHON="$CS_CONDA/bin/python"; fi

# --- pypi: tinypkg==1.2.3
CS_STEP=pypi
# With conda, the pip packages go inside the conda env.
CS_PIP_PYTHON="$CS_CONDA/bin/python"
[ -x "$CS_PIP_PYTHON" ] \
  || cs_die "the conda env has no python for the pip packages; add python to env_conda"
cs_log "pip install"
"$CS_PIP_PYTHON" -m pip install --no-input --disable-pip-version-check tinypkg==1.2.3

# --- activate: what a job sources before it runs (absolute paths, written last and
# atomically, so its presence means the environment is complete)
CS_STEP=activate
{
  printf '# cloudsend environment %s: `source` this file to use it\n' conda
  printf 'export CONDA_PREFIX=%q\n' "$CS_CONDA"
  printf 'export PATH=%q:"$PATH"\n' "$CS_CONDA/bin"
  if [ -n "$CS_PYTHON" ]; then printf 'export CLOUDSEND_PYTHON=%q\n' "$CS_PYTHON"; fi
  # Packages' activation hooks (GDAL_DATA, compilers...), tolerant of `set -u` callers.
  cat <<'CLOUDSEND_ACTIVATE_D'
if [ -d "$CONDA_PREFIX/etc/conda/activate.d" ]; then
  case $- in *u*) _cs_nounset=1; set +u ;; *) _cs_nounset="" ;; esac
  for _cs_hook in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do
    if [ -r "$_cs_hook" ]; then . "$_cs_hook"; fi
  done
  if [ -n "$_cs_nounset" ]; then set -u; fi
  unset _cs_hook _cs_nounset
fi
CLOUDSEND_ACTIVATE_D
} > activate.tmp
mv -f activate.tmp activate
cs_log "environment ready"
