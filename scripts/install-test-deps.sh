#!/usr/bin/env bash
# Installs the Debian packages the test suite and the benchmarks use, on a fresh machine.
# Each tool is installed only when missing, so a machine that has them pays nothing.
set -euo pipefail
need=()
# have COMMAND PACKAGE: queue PACKAGE unless COMMAND is found (also in the sbin folders).
have() {
  if command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; then return 0; fi
  need+=("$2")
}
have bzip2 bzip2
have lbzip2 lbzip2
have tar tar
have md5sum coreutils
have mount mount
# Real servers for the SSH, HTTP and git fetch tests (test/fixtures/).
have sshd openssh-server
have ssh openssh-client
have ssh-keygen openssh-client
have nginx nginx
have git git
have nsenter util-linux
have ip iproute2
have curl curl
# Autotest's HTTP fetcher probes a repository's base URL with wget (test/server.test.ts); the
# autoserv install script on hosts falls back to it. The HTTPS tests make their lab CA with openssl.
have wget wget
# Archives as other tools make them (test/fixtures/archives.ts): Python's tarfile.
# Debian's python3 by its path: a pyenv shim on PATH is not the distribution's.
[ -x /usr/bin/python3 ] || need+=(python3)
have openssl openssl
# The systemd unit in etc/ is checked with systemd-analyze verify (test/operator.test.ts).
have systemd-analyze systemd
# A real S3-compatible server (Ceph radosgw) for the S3 tests.
have radosgw radosgw
have ceph-mon ceph
# The frontend tests drive Debian's Chromium with playwright-core; the server benchmark uses wrk.
have chromium chromium
have wrk wrk
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  export DEBIAN_FRONTEND=noninteractive
  echo "install-test-deps: installing ${need[*]}" >&2
  apt-get update -qq
  # Do not let the packages' maintainer scripts start the system sshd/nginx services.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  log=$(mktemp)
  status=0
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${need[@]}" >"$log" 2>&1 || status=$?
  if ((made_policy)); then rm -f "$policy"; fi
  if ((status)); then cat "$log" >&2; fi
  rm -f "$log"
  exit "$status"
fi
