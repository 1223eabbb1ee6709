#!/usr/bin/env bash
# Installs everything taiyi needs to build and test, from Debian packages only.
# Used by README.md and .ci/run. Safe to run again; skips apt when all is present.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libdnnl-dev nlohmann-json3-dev libgtest-dev libgmock-dev
      libutf8proc-dev libspng-dev libcli11-dev zlib1g-dev python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
