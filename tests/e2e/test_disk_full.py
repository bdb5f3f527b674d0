"""The journal's disk fills up under a running proxy: requests are refused with a clear
error rather than served unaudited, and served again, with an intact chain, once
there is room. A real full disk: a small tmpfs mounted for the test."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); "
                    "tests/test_audit.py covers a full journal in-process")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, small_disk: Path) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("diskfull"))
    s.journal = small_disk / "journal"
    with s:
        yield s


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left."""
    filler = disk / "filler"
    block = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_refuses_requests_then_serves_again(
    stack: Stack, small_disk: Path, openai_client: OpenAIFactory
) -> None:
    stack.put_key("openai", fake_key())
    client = openai_client(api_key=stack.token("disk"))
    served = 1
    client.chat.completions.create(model="gpt-4o", messages=HELLO)

    filler = fill(small_disk)
    refused = None
    for _ in range(20):  # records still fit in the journal file's last allocated page
        try:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
            served += 1
        except openai.InternalServerError as exc:
            refused = exc
            break
    assert refused is not None, "the journal never ran out of room"
    assert refused.status_code == 503
    assert "egressguard refuses traffic it cannot record" in str(refused)
    assert "check disk space" in str(refused)

    vendor_saw = len(stack.received())
    with pytest.raises(openai.InternalServerError):  # refused before it goes anywhere
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert len(stack.received()) == vendor_saw
    assert "audit journal write failed, refusing traffic" in stack.proxy_output()

    filler.unlink()

    def serving() -> bool:
        try:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        except openai.InternalServerError:
            return False
        return True

    wait_until(serving, timeout=20, what="requests to be served once there is room")
    served += 1
    assert "audit journal writable again" in stack.proxy_output()
    stack.stop_proxy()  # the shutdown checkpoint, then the whole trail is checked

    verified = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "verify",
                               str(stack.journal)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    ok = [r for r in stack.records() if r["kind"] == "request" and r["status"] == 200]
    assert len(ok) >= served  # every answer the agent got is on record
