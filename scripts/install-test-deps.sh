#!/usr/bin/env bash
# Installs the Debian packages the test suite and the benchmarks use, on a fresh machine.
# Each tool is installed only when missing, so a machine that has them pays nothing.
set -euo pipefail
need=()
command -v bzip2 >/dev/null || need+=(bzip2)
command -v lbzip2 >/dev/null || need+=(lbzip2)
command -v tar >/dev/null || need+=(tar)
command -v md5sum >/dev/null || need+=(coreutils)
command -v mount >/dev/null || need+=(mount)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
