#!/usr/bin/env bash
# Install the Debian packages the tests need, only those that are missing.
# Called by the README's test command (and so by .ci/run); safe to run again.
#
#   openssl, python3-venv      the core tests and the openssl interop peer
#   nginx-light, haproxy,
#   apache2                    the end-to-end tests (real servers on 127.0.0.1;
#                              installing them starts no service here)
#   mandoc                     the man page lint
#   systemd                    systemd-analyze verify and security of
#                              contrib/systemd
#   prometheus                 promtool: check and test contrib/prometheus's alert rules
#   man-db                     `man`: verify checks Documentation=man:...,
#                              and the install test runs `man -w ocspstaple`
set -euo pipefail

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
command -v mandoc >/dev/null 2>&1 || need+=(mandoc)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: please install: ${need[*]} (apt-get install -y --no-install-recommends ${need[*]})" >&2
    exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: packages must not start their services (a CI machine or a
# container may have no init; the tests start the servers themselves).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
