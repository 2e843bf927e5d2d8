#!/usr/bin/env bash
# Rebuild .dvc/offline-plots.html: DVC's plot page with Vega, Vega-Lite and Vega-Embed inlined
# (the versions DVC's renderer loads from a CDN), so `dvc plots show` works offline.
# Needs npm and the npm registry; the result is committed, so users need neither.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packages=(vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2)
(cd "$work" && npm pack --silent "${packages[@]}" >/dev/null)
out=.dvc/offline-plots.html
{
  echo '<!DOCTYPE html>'
  echo '<html>'
  echo '<head>'
  echo '    {refresh_tag}'
  echo '    <title>whyconv plots</title>'
  for package in "${packages[@]}"; do
    name=${package%@*}
    tar -xzf "$work/$name-${package#*@}.tgz" -C "$work" package/build/"$name".min.js package/LICENSE
    printf '    <!-- %s, BSD-3-Clause:\n%s\n    -->\n    <script>\n' "$package" "$(cat "$work/package/LICENSE")"
    cat "$work/package/build/$name.min.js"
    printf '\n    </script>\n'
    rm -rf "$work/package"
  done
  echo '    <style> table { border-spacing: 15px; } </style>'
  echo '</head>'
  echo '<body>'
  echo '    {plot_divs}'
  echo '</body>'
  echo '</html>'
} > "$out"
echo "wrote $out ($(du -h "$out" | cut -f1))"
