#!/usr/bin/env bash
# The test command (README.md, .ci/run): builds taiyi and runs every test, then
# rebuilds the file loaders' tests under AddressSanitizer + UBSan and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
# Test processes run side by side: OpenMP threads that spin while waiting would starve each
# other on a 2-core machine (124 s instead of 8 s), so they sleep instead.
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build --output-on-failure -j"$(nproc)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTAIYI_SANITIZE=ON -DTAIYI_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)" --target io_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/tests/io_tests --gtest_brief=1
echo "all tests passed"
