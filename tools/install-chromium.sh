#!/usr/bin/env bash
# Chromium for the browser tests (pytest -m browser), which drive Debian's `chromium` through
# Playwright; pip installs playwright with the test extra, never a browser of its own.
# Installed only where it is missing, with apt-get as root or through passwordless sudo. Where
# that cannot be done (or apt-get fails) it prints one line saying why the browser tests will
# skip, and succeeds: the rest of the suite needs no browser.
set -euo pipefail

command -v chromium >/dev/null 2>&1 && exit 0

if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "chromium is missing and cannot be installed here (neither root nor passwordless sudo): the browser tests will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and cannot be installed here (no apt-get): the browser tests will skip" >&2
    exit 0
fi
if ! { $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium; }; then
    echo "chromium could not be installed (apt-get failed, output above): the browser tests will skip" >&2
fi
