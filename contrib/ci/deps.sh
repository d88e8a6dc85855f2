#!/usr/bin/env bash
# Install the Debian packages the tests need, only those that are missing.
# Called by the README's test command (and so by .ci/run); safe to run again.
set -euo pipefail

need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: please install: ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 1
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
