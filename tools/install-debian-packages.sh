#!/usr/bin/env bash
# The Debian packages some tests need, installed only where missing, with apt-get as root or
# through passwordless sudo:
#   chromium     the browser tests (pytest -m browser) drive it through Playwright; pip installs
#                playwright with the test extra, never a browser of its own
#   bubblewrap   the sandbox every grading kernel runs in (grader/autograde/sandbox.py)
#   postgresql   the server tests/grader/test_postgres.py starts on 127.0.0.1 to grade into
# Where they cannot be installed (or apt-get fails) it prints one line saying why the tests that
# need them will skip, and succeeds: the rest of the suite needs none of them.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "${missing[*]} missing and cannot be installed here (neither root nor passwordless sudo): the tests that need them will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} missing and cannot be installed here (no apt-get): the tests that need them will skip" >&2
    exit 0
fi
if ! { $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    echo "${missing[*]} could not be installed (apt-get failed, output above): the tests that need them will skip" >&2
fi
