"""Scale-out on a Chroma server: `chroma run` on loopback holds the facts, two model worker processes share the
store folder (ledger, lock, artifacts); an edit through one worker is answered by the other after it syncs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editmem.memory import EditMemory

REPO = Path(__file__).resolve().parent.parent
WORKERS = REPO / "bench" / "store_workers.py"
OLD = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Pat Gelsinger"}
NEW = {"subject": "Intel", "prompt": "Who is the CEO of Intel?", "target": "Lip-Bu Tan"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chroma_binary() -> str:
    found = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if found is None:
        pytest.fail("the `chroma` command (installed with chromadb) is missing")
    return found


@pytest.fixture()
def chroma_server(tmp_path):
    """`chroma run` on 127.0.0.1 and a free port; yields its URL, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([chroma_binary(), "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("chroma server did not start in 60 s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Worker:
    def __init__(self, store: Path, model: Path, url: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(WORKERS), "serve", str(store), str(model), url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker died: {self.proc.stderr.read()[-2000:]}")
        return json.loads(line)

    def call(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply = self.read()
        assert "error" not in reply, reply
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_two_workers_serve_one_memory_on_a_chroma_server(tmp_path, tiny_checkpoint, chroma_server):
    store = tmp_path / "shared-store"
    first = Worker(store, tiny_checkpoint, chroma_server)
    assert "ready" in first.read()  # the first worker records the store (model, strategy, server)
    second = Worker(store, tiny_checkpoint, chroma_server)
    try:
        assert "ready" in second.read()
        old = first.call(edit=OLD)["added"][0]
        assert second.call(ask="Who is the CEO of Intel?")["fired"] == [old]
        replaced = second.call(edit=NEW)  # either worker may write: the store lock orders them
        new = replaced["added"][0]
        assert replaced["superseded"] == {old: new}
        answer = first.call(ask="Who is the CEO of Intel?")
        assert answer["fired"] == [new] and "Lip-Bu Tan" in answer["prompt"]
        first.call(forget=new)
        assert second.call(ask="Who is the CEO of Intel?")["fired"] == []
    finally:
        first.close()
        second.close()
    meta = json.loads((store / "store.json").read_text())
    assert meta["chroma_url"] == chroma_server and not (store / "chroma").exists()  # facts live on the server
    memory = EditMemory(store)
    assert memory.verify().ok and memory.collection().count() == 2
