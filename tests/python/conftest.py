"""Start the real `ferry serve` with the real default model on a free loopback port."""
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_PATH = pathlib.Path(
    os.environ.get("FERRY_TEST_GGUF", ROOT / ".ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
)
MODEL = "SmolLM2-135M-Instruct.Q4_1"
EMBED_DIR = pathlib.Path(
    os.environ.get("FERRY_TEST_EMBED_DIR", ROOT / ".ferry-cache/models/all-MiniLM-L6-v2")
)
EMBED_MODEL = EMBED_DIR.name


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def base_url(tmp_path_factory):
    binary = os.environ.get("FERRY_BIN", str(ROOT / "target/debug/ferry"))
    assert pathlib.Path(binary).exists(), f"{binary} missing: build with `cargo build -p ferry-cli`"
    assert MODEL_PATH.exists(), f"{MODEL_PATH} missing: run scripts/fetch-model.sh"
    assert (EMBED_DIR / "model.safetensors").exists(), f"{EMBED_DIR} missing: run scripts/fetch-model.sh"
    port = _free_port()
    env = dict(os.environ, FERRY_HOME=str(tmp_path_factory.mktemp("ferry-home")))
    proc = subprocess.Popen(
        [binary, "serve", "--model", str(MODEL_PATH), "--model", str(EMBED_DIR), "--port", str(port), "--kv-cache-tokens", "8192",
         "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        assert proc.poll() is None, "ferry serve exited"
        assert time.time() < deadline, "ferry serve did not become ready"
        time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def client(base_url):
    import openai

    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
