#!/usr/bin/env bash
# Install ocspstaple for production from this checkout, or remove it. As root.
#
#   bash contrib/install.sh               install, or upgrade in place
#   bash contrib/install.sh --uninstall   remove everything it installed
#
# What it installs (Debian 12 and 13; any Linux with Python 3.11+ and venv):
#   /opt/ocspstaple                         a venv with ocspstaple and its
#                                           dependencies from PyPI (Debian's
#                                           python3-cryptography, -requests and
#                                           -urllib3 are older than it needs,
#                                           and pip may not install system-wide)
#   /usr/local/bin/ocspstaple               a symlink to the venv's command,
#                                           where the units run it
#   /usr/local/share/man/man1/ocspstaple.1  the man page
#   /usr/local/lib/systemd/system/          ocspstaple.service, .timer and
#                                           ocspstaple-serve.service (enabled
#                                           by you, not by this script)
#   /etc/ocspstaple.toml                    an example, only if there is none
#
# --uninstall removes all of it but /etc/ocspstaple.toml when you changed it,
# and what runs and you made: /var/lib/ocspstaple (state records) and drop-ins
# in /etc/systemd/system/ocspstaple*.d; it names what it kept.
set -euo pipefail

PREFIX=/opt/ocspstaple
BIN=/usr/local/bin/ocspstaple
MAN=/usr/local/share/man/man1/ocspstaple.1
UNIT_DIR=/usr/local/lib/systemd/system
UNITS=(ocspstaple.service ocspstaple.timer ocspstaple-serve.service)
CONFIG=/etc/ocspstaple.toml
SHARE=$PREFIX/share/ocspstaple
EXAMPLE=$SHARE/ocspstaple.example.toml
CREATED=$SHARE/created-dirs  # directories this script made, removed if empty
PYTHON=${PYTHON:-/usr/bin/python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
# sd_booted(3): systemd is PID 1. In a container or a CI job it is not, and
# systemctl would fail; the units are picked up at the next boot instead.
systemd_running() { [ -d /run/systemd/system ]; }

# mkdir -p, remembering each directory it had to create (for --uninstall).
make_dir() {
    local d=$1 missing=()
    while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    for d in "${missing[@]}"; do
        mkdir -m 0755 "$d"
        created+=("$d")
    done
}

do_install() {
    [ -f "$SRC/setup.cfg" ] && [ -d "$SRC/ocspstaple" ] || die "$SRC is not an ocspstaple checkout"
    "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON must be Python 3.11 or newer, with venv (apt-get install python3-venv)"
    if [ -e "$BIN" ] && [ "$(readlink "$BIN" || true)" != "$PREFIX/bin/ocspstaple" ]; then
        die "$BIN exists and is not this script's link to $PREFIX/bin/ocspstaple; remove it first"
    fi
    created=()
    if [ -f "$CREATED" ]; then mapfile -t created <"$CREATED"; fi
    # pip builds a source tree in place (build/, *.egg-info): build from a copy.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist -cf - . | tar -C "$tmp" -xf -
    # An existing venv is upgraded in place (the timer may run it meanwhile;
    # pip replaces one package at a time), a broken one is made anew.
    if [ ! -x "$PREFIX/bin/python" ] || ! "$PREFIX/bin/python" -c '' 2>/dev/null; then
        make_dir "$(dirname "$PREFIX")"
        "$PYTHON" -m venv --clear "$PREFIX"
    fi
    say "installing into $PREFIX (pip, from PyPI)"
    "$PREFIX/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --upgrade "$tmp"
    # pip keeps the version when it is unchanged: reinstall this checkout's code.
    "$PREFIX/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --force-reinstall --no-deps "$tmp"

    make_dir "$(dirname "$BIN")"
    ln -sfn "$PREFIX/bin/ocspstaple" "$BIN"
    make_dir "$(dirname "$MAN")"
    install -m 0644 "$PREFIX/share/man/man1/ocspstaple.1" "$MAN"
    make_dir "$UNIT_DIR"
    for unit in "${UNITS[@]}"; do
        install -m 0644 "$SRC/contrib/systemd/$unit" "$UNIT_DIR/$unit"
    done
    # The example replaces a config only when there is none, or when it is the
    # previous example, never edited.
    untouched=no
    if [ -f "$CONFIG" ] && [ -f "$EXAMPLE" ] && cmp -s "$CONFIG" "$EXAMPLE"; then untouched=yes; fi
    make_dir "$SHARE"
    install -m 0644 "$SRC/contrib/ocspstaple.example.toml" "$EXAMPLE"
    if [ ! -e "$CONFIG" ] || [ $untouched = yes ]; then
        install -m 0644 "$EXAMPLE" "$CONFIG"
        say "wrote the example $CONFIG: name your certificates in it"
    else
        say "kept your $CONFIG (the example is $EXAMPLE)"
    fi
    printf '%s\n' "${created[@]}" | awk 'NF && !seen[$0]++' >"$CREATED"
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "installed $("$BIN" --version)"
    say "next: edit $CONFIG, then: systemctl enable --now ocspstaple.timer"
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now ocspstaple.timer ocspstaple-serve.service >/dev/null 2>&1 || true
        systemctl stop ocspstaple.service >/dev/null 2>&1 || true
    fi
    for unit in "${UNITS[@]}"; do rm -f "$UNIT_DIR/$unit"; done
    if [ -L "$BIN" ] && [ "$(readlink "$BIN")" = "$PREFIX/bin/ocspstaple" ]; then rm -f "$BIN"; fi
    rm -f "$MAN"
    if [ -f "$CONFIG" ] && [ -f "$EXAMPLE" ] && cmp -s "$CONFIG" "$EXAMPLE"; then
        rm -f "$CONFIG"
    elif [ -e "$CONFIG" ]; then
        say "kept $CONFIG (not the installed example: yours, or changed by you)"
    fi
    created=()
    if [ -f "$CREATED" ]; then mapfile -t created <"$CREATED"; fi
    rm -rf "$PREFIX"
    # Deepest first; only if empty (another program may have put files there since).
    for ((i = ${#created[@]} - 1; i >= 0; i--)); do
        d=${created[i]}
        case "$d" in "$PREFIX"|"$PREFIX"/*) continue ;; esac
        rmdir "$d" 2>/dev/null || true
    done
    for kept in /var/lib/ocspstaple /etc/systemd/system/ocspstaple.service.d \
                /etc/systemd/system/ocspstaple.timer.d /etc/systemd/system/ocspstaple-serve.service.d; do
        if [ -e "$kept" ]; then say "kept $kept"; fi
    done
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "removed ocspstaple"
}

[ "$(id -u)" -eq 0 ] || die "run it as root: it writes to /opt, /usr/local and /etc"
case "${1:-}" in
    "") do_install ;;
    --uninstall) do_uninstall ;;
    *) die "usage: $0 [--uninstall]" ;;
esac
