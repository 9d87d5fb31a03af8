#!/usr/bin/env bash
# The base revision's Foundry Local package, for timing it beside the head's in the same job:
#
#   scripts/base_package.sh BASE_REV OUT_DIR     prints the package folder (OUT_DIR/<name>) on success
#
# First from DVC at that revision (`dvc get`: this project's cache, then its remote); when neither holds it,
# rebuilt in a throw-away git worktree at BASE_REV with `dvc repro package`, which reuses what the cache has
# (SLMOPS_REBUILD_BASE=0 skips the rebuild). Exit 1 when the base has no package: the report then shows the
# committed speed figures as context only.
set -euo pipefail
base_rev="${1:?usage: scripts/base_package.sh BASE_REV OUT_DIR}"
out="${2:?usage: scripts/base_package.sh BASE_REV OUT_DIR}"
cd "$(dirname "$0")/.."
root="$PWD"
rm -rf "$out"

found() {  # the one package folder under $out
  local config
  config="$(find "$out" -mindepth 2 -maxdepth 2 -name genai_config.json -print -quit 2>/dev/null || true)"
  [ -n "$config" ] && dirname "$config"
}

if dvc get . models/foundry --rev "$base_rev" -o "$out" >&2 && found; then
  exit 0
fi
echo "base_package: models/foundry at $base_rev is in neither the DVC cache nor the remote" >&2
if [ "${SLMOPS_REBUILD_BASE:-1}" = 0 ]; then
  exit 1
fi
tree="$root/.slmops/base-tree"
git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"
git worktree add --force --detach "$tree" "$base_rev" >&2
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
cache="$(dvc cache dir)"
if (cd "$tree" && dvc cache dir --local "$cache" && dvc repro package) >&2; then
  rm -rf "$out" && mkdir -p "$out" && cp -r "$tree/models/foundry/." "$out/"
  found && exit 0
fi
echo "base_package: rebuilding the package at $base_rev failed" >&2
exit 1
