#!/usr/bin/env bash
# The README's first command: install the Debian packages, build (Release),
# and run `tessera demo` (pretrains the base models into runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
./build/tessera demo "$@"
