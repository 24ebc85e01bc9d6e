#!/usr/bin/env bash
# Ferry's test command: fetch the default model (sha256-checked), run every Rust test, then
# drive the real server with the official openai Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
export FERRY_TEST_GGUF="$PWD/.ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo test --workspace
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
FERRY_BIN="$PWD/target/debug/ferry" .venv/bin/python -m pytest tests/python -q
