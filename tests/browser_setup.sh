#!/usr/bin/env bash
# Installs Debian's Chromium for tests/test_browser.py when it is missing (run by `make test`).
# Never fails the caller: without root or apt it says why, and the browser test then skips with that reason.
set -u
CHROMIUM=${EMBEDSTORE_CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "browser_setup: $CHROMIUM missing and not root: run 'sudo apt-get install -y chromium' for the browser test" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "browser_setup: $CHROMIUM missing and no apt-get: install Chromium for the browser test" >&2
    exit 0
fi
echo "browser_setup: installing Debian's chromium (once) for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
# Install from the current lists first; refresh them only when that fails (stale or empty lists).
apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "browser_setup: apt-get could not install chromium; the browser test will skip" >&2
exit 0
