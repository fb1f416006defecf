#!/usr/bin/env bash
# Copy Chart.js (pinned in package.json) from node_modules into the Python package, where the
# dashboard function serves it: the page loads no script from the internet.
# Run after `npm ci` whenever package.json's chart.js version changes.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${NODE_MODULES:-node_modules}
dest=shared/nimbus/api/static
cp "$src/chart.js/dist/chart.umd.min.js" "$dest/chart.umd.min.js"
cp "$src/chart.js/LICENSE.md" "$dest/chart.js.LICENSE.md"
cp "$src/@kurkle/color/LICENSE.md" "$dest/kurkle-color.LICENSE.md"   # bundled inside chart.umd
head -3 "$dest/chart.umd.min.js"
