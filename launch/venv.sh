#!/usr/bin/env bash
# The virtual environment the launchers run dualenc.train from, built on each host.
#
#   bash launch/venv.sh EXTRA    # in the checkout: .venv-EXTRA with pip install '.[EXTRA]'
#
# One venv per extra (.venv-tpu, .venv-cuda12), never .venv: `make setup` builds .venv with CPU
# jax, and a GPU host that reused it trained on CPU. A stamp written last records what was
# installed (the extra and setup.py's hash; the python, jax version and host for the record); a
# venv without a matching stamp (other deps, an interrupted build) is rebuilt from scratch.
# Hosts sharing a filesystem (an NFS home) start together: flock on .venv-EXTRA.lock lets one
# build while the others wait and then reuse it (Linux maps flock to NFS byte-range locks, so it
# holds across hosts). Hosts with their own disks each build their own.
# Python: dualenc needs >= 3.11 and TPU VM images ship 3.10. $PYTHON if set, else the first of
# python3.13, python3.12, python3.11, python3 that is >= 3.11, else one installed with uv
# (`uv python install 3.11`, no root needed; uv itself from `pip install --user uv` if absent).
# DUALENC_PYTHON_INSTALL=0 turns that install into an error; DUALENC_VENV_WAIT (s, default 3600)
# bounds the wait for another host's build.

# "3.10": the major.minor of interpreter $1; fails if it does not run.
py_version() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# Whether interpreter $1 runs and is Python >= 3.11.
py_ok() {
  local v
  v=$(py_version "$1") || return 1
  [[ $v =~ ^3\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 11))
}

# Prints the path of a Python >= 3.11 (see the header for the order); one line on stderr if none.
pick_python() {
  if [[ -n ${PYTHON:-} ]]; then
    py_ok "$PYTHON" && { command -v "$PYTHON"; return 0; }
    local v
    v=$(py_version "$PYTHON") || v="not runnable"
    echo "dualenc needs Python >= 3.11; PYTHON=$PYTHON is $v" >&2
    return 1
  fi
  local c
  for c in python3.13 python3.12 python3.11 python3; do
    command -v "$c" >/dev/null && py_ok "$c" && { command -v "$c"; return 0; }
  done
  install_python
}

# No Python >= 3.11 here: installs 3.11 with uv (into ~/.local/share/uv, no root) and prints it.
install_python() {
  local have need uv log py
  have=$(py_version python3) && have="python3 is $have" || have="no python3"
  need="dualenc needs Python >= 3.11 and this host has none ($have); set PYTHON=/path/to/python3.11"
  if [[ ${DUALENC_PYTHON_INSTALL:-1} == 0 ]]; then
    echo "$need, or install one (uv python install 3.11; Ubuntu: deadsnakes python3.11-venv)" >&2
    return 1
  fi
  if ! uv=$(command -v uv); then
    if ! log=$(python3 -m pip install --user -q uv 2>&1); then
      echo "$need; pip install --user uv failed: $(tail -n1 <<<"$log")" >&2
      return 1
    fi
    uv="$(python3 -m site --user-base)/bin/uv"
  fi
  if ! log=$("$uv" python install 3.11 2>&1) || ! py=$("$uv" python find 3.11 2>/dev/null) ||
    ! py_ok "$py"; then
    echo "$need; uv python install 3.11 failed: $(tail -n1 <<<"$log")" >&2
    return 1
  fi
  echo "$py"
}

# The first stamp line: what a venv for extra $1 must have been built from.
venv_key() {
  echo "extra=$1 setup.py=$(sha256sum <setup.py | cut -d' ' -f1)"
}

# Whether venv $1 was built, completely, for key $2.
venv_ready() {
  [[ -f $1/.dualenc-stamp && $(head -n1 "$1/.dualenc-stamp") == "$2" ]]
}

# (Re)builds venv $1 with extra $2; the stamp (key $3) is written last, by rename.
build_venv() {
  local venv=$1 extra=$2 key=$3 py jax
  py=$(pick_python) || return 1
  echo "building $venv with $py and '.[$extra]'" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv" || {
    echo "$py -m venv failed (Debian/Ubuntu: apt install python$(py_version "$py")-venv)" >&2
    return 1
  }
  "$venv/bin/pip" install -q ".[$extra]" || { echo "pip install '.[$extra]' failed" >&2; return 1; }
  jax=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("jax"))' \
    2>/dev/null) || jax=unknown
  printf '%s\npython=%s (%s) jax=%s host=%s\n' "$key" "$(py_version "$py")" "$py" "$jax" \
    "${HOSTNAME:-?}" >"$venv/.dualenc-stamp.tmp" &&
    mv "$venv/.dualenc-stamp.tmp" "$venv/.dualenc-stamp"
}

# Makes .venv-$1 ready in the checkout ($PWD), building it under the lock if its stamp differs.
ensure_venv() {
  local extra=$1 venv=.venv-$1 key fd rc
  [[ -f setup.py ]] ||
    { echo "launch/venv.sh: no setup.py in $PWD (run it in the checkout)" >&2; return 2; }
  key=$(venv_key "$extra")
  venv_ready "$venv" "$key" && { venv_runs "$venv"; return; }
  command -v flock >/dev/null || { echo "launch/venv.sh needs flock (util-linux)" >&2; return 1; }
  exec {fd}>>"$venv.lock"
  if ! flock -w "${DUALENC_VENV_WAIT:-3600}" "$fd"; then
    echo "waited ${DUALENC_VENV_WAIT:-3600} s for $PWD/$venv.lock (another host building?)" >&2
    exec {fd}>&-
    return 1
  fi
  # Another host may have finished it while this one waited.
  venv_ready "$venv" "$key" || build_venv "$venv" "$extra" "$key"
  rc=$?
  exec {fd}>&-
  ((rc == 0)) || return $rc
  venv_runs "$venv"
}

# A venv on a shared filesystem that another host built with an interpreter this host lacks is
# reported, not rebuilt: rebuilding would pull it from under the hosts already running from it.
venv_runs() {
  "$1/bin/python" -c '' 2>/dev/null && return 0
  echo "$PWD/$1 was built with $(sed -n 2p "$1/.dualenc-stamp"), which does not run here;" \
    "set PYTHON to an interpreter at the same path on every host, or delete $1 to rebuild" >&2
  return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  [[ $# -eq 1 ]] || { echo "usage: bash launch/venv.sh EXTRA  (in the checkout)" >&2; exit 2; }
  ensure_venv "$1"
fi
