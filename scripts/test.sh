#!/usr/bin/env bash
# The test command (README.md, .ci/run): builds taiyi and runs every test, then
# rebuilds the file loaders' tests under AddressSanitizer + UBSan and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
ctest --test-dir build --output-on-failure -j"$(nproc)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTAIYI_SANITIZE=ON -DTAIYI_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)" --target io_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/tests/io_tests --gtest_brief=1
echo "all tests passed"
