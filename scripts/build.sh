#!/usr/bin/env bash
# Installs the Debian dependencies (scripts/install-deps.sh) and builds taiyi in
# build/ (Release, warnings as errors). Prints the path of the taiyi binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTAIYI_WERROR=ON >&2
cmake --build build -j"$(nproc)" >&2
echo "$PWD/build/taiyi"
