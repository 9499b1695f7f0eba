#!/usr/bin/env bash
# Render a fedsim HTML page (report.html or compare.html) in headless Chromium and save a full-page screenshot,
# to check that it displays as a browser shows it. Needs Debian's chromium: apt-get install -y chromium
#   scripts/render_report.sh runs/stragglers-sync/report.html [out.png]
set -euo pipefail
page=$(realpath "$1")
out=${2:-${page%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "render_report: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1200,4200 --screenshot="$out" "file://$page" >/dev/null 2>&1
[ -s "$out" ] || { echo "render_report: no screenshot written" >&2; exit 1; }
echo "$out"
