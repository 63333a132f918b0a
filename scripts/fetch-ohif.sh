#!/usr/bin/env bash
# Fetches the OHIF viewer for `vna api` to serve at /viewer: the prebuilt `dist/` folder of
# the npm package @ohif/app (no build, nothing from a CDN), unpacked into DEST.
#   usage: scripts/fetch-ohif.sh [DEST]   (default viewer/ohif; OHIF_VERSION=3.13.2)
# npm checks the tarball against the registry's integrity hash. Run again, it does nothing
# while DEST holds that version. The last line is the VNA_VIEWER_DIR to set.
set -euo pipefail

version="${OHIF_VERSION:-3.13.2}"
dest="${1:-viewer/ohif}"
dest="${dest%/}"
if [ -e "$dest" ] && [ ! -f "$dest/index.html" ] && [ ! -f "$dest/.ohif-version" ]; then
  echo "$dest exists and is not an OHIF build: refusing to replace it" >&2; exit 2
fi

if [ "$(cat "$dest/.ohif-version" 2>/dev/null)" != "$version" ] || [ ! -f "$dest/index.html" ]; then
  command -v npm >/dev/null 2>&1 || {
    echo "npm is needed to fetch @ohif/app (Debian: apt-get install npm)" >&2; exit 3; }
  mkdir -p "$(dirname "$dest")"
  # unpacked beside DEST (same file system), then moved into place in one rename
  work="$(mktemp -d "$dest.tmp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "fetching @ohif/app@$version from the npm registry ..." >&2
  (cd "$work" && npm pack --silent --ignore-scripts "@ohif/app@$version" >/dev/null)
  tar -xzf "$work"/ohif-app-*.tgz -C "$work" package/dist
  [ -f "$work/package/dist/index.html" ] || {
    echo "@ohif/app@$version has no dist/index.html" >&2; exit 1; }
  echo "$version" > "$work/package/dist/.ohif-version"
  rm -rf "$dest"
  mv "$work/package/dist" "$dest"
fi
echo "VNA_VIEWER_DIR=$(cd "$dest" && pwd)"
