#!/usr/bin/env bash
# Install everything l3hostd's demo and tests need on a fresh Debian/Ubuntu machine (root):
# kernel tools, BIRD 2, nftables, and the Python venv in .venv. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in ip:iproute2 nft:nftables bird:bird2 birdc:bird2 ping:iputils-ping \
            tcpdump:tcpdump nc:netcat-openbsd sysctl:procps runuser:util-linux chrt:util-linux make:make; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# `ip route` prints our route protocols by name.
if [ -d /etc/iproute2 ]; then
  mkdir -p /etc/iproute2/rt_protos.d
  cp config/rt_protos.d/l3hostd.conf /etc/iproute2/rt_protos.d/l3hostd.conf
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import l3hostd, pyroute2, uvloop, exabgp, pydantic' 
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The daemon imports compiled bytecode, as it does from a pip-installed wheel: an editable
# install compiles nothing, and with PYTHONDONTWRITEBYTECODE set (CI) every start would
# compile from source -- slower, and ~2 MiB more RSS, which the memory benchmarks count.
.venv/bin/python -m compileall -q l3hostd >/dev/null
