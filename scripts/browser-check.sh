#!/usr/bin/env bash
# Can the browser test (tests/browser) run here? Installs Debian's Chromium and the CJK fonts the screenshots need
# when they are missing and this is root, then prints one line and exits 0 (yes) or 3 (no, and why).
#
#   scripts/browser-check.sh        install if needed, then check
#
# Debian's packages, not a browser download: Playwright (Python) drives /usr/bin/chromium through
# executable_path, so `playwright install` (which fetches a browser build from outside) is never needed.
# Exit codes: 0 Chromium runs; 3 it cannot run here (the line says why); anything else is a real failure.
set -uo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
LOG="${TMPDIR:-/tmp}/escrow-browser-apt.log"

say() { echo "browser test: $*"; }

have_fonts() { fc-list : family 2>/dev/null | grep -i "Noto Sans CJK" >/dev/null; }  # no -q: with pipefail, an early exit makes fc-list fail

if [[ ! -x "$CHROMIUM" ]] || ! have_fonts; then
  if [[ "$CHROMIUM" != /usr/bin/chromium && ! -x "$CHROMIUM" ]]; then
    say "not run: CHROMIUM=$CHROMIUM is not an executable"
    exit 3
  fi
  if [[ $(id -u) -ne 0 ]]; then
    [[ -x "$CHROMIUM" ]] || { say "not run: Chromium is not installed and installing it needs root (apt-get install chromium fonts-noto-cjk)"; exit 3; }
  elif ! command -v apt-get >/dev/null 2>&1; then
    [[ -x "$CHROMIUM" ]] || { say "not run: Chromium is not installed and this machine has no apt-get"; exit 3; }
  else
    echo "browser test: installing Debian's chromium and fonts-noto-cjk (log: $LOG)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             chromium fonts-noto-cjk; } >"$LOG" 2>&1; then
      [[ -x "$CHROMIUM" ]] || { say "not run: apt-get could not install chromium ($(tail -n 1 "$LOG"))"; exit 3; }
      echo "browser test: fonts-noto-cjk could not be installed; Korean text in screenshots may not render" >&2
    fi
  fi
fi

if ! version=$("$CHROMIUM" --version 2>/dev/null); then
  say "not run: $CHROMIUM does not start ($("$CHROMIUM" --version 2>&1 | tail -n 1))"
  exit 3
fi
say "$version at $CHROMIUM"
exit 0
