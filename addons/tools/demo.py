"""`egressguard demo`: the whole keyless path on this machine, no vendor account needed.

A real OpenBao dev server holds a (made-up) OpenAI key; a local TLS server plays
api.openai.com; the official openai SDK, holding only an egressguard token, calls
it through the proxy; then the vendor's view and the audit record are shown.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import orjson

from egressguard.tools.stack import Stack


def _step(n: int, text: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}{n}. {text}{plain}", flush=True)


def _mask(value: str) -> str:
    return value[:10] + "…" + value[-4:]


def main() -> int:
    try:
        import openai
    except ImportError:
        print("egressguard demo needs the openai SDK: pip install 'egressguard[demo]'",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="egressguard-demo-") as tmp, Stack(Path(tmp)) as s:
        real_key = "sk-demo-" + secrets.token_hex(20)
        _step(1, "Vault (a real OpenBao dev server) holds the vendor key")
        version = s.put_key("openai", real_key)
        print(f"   {s.vault.addr}  secret/egressguard/vendors/openai  v{version}: "
              f"{_mask(real_key)}")
        _step(2, "egressguard runs; a local TLS server plays api.openai.com")
        print(f"   proxy  {s.proxy}\n   vendor 127.0.0.1:{s.vendor_port} "
              "(egressguard run --upstream-map api.openai.com=127.0.0.1:PORT)")

        _step(3, "The agent holds only an egressguard token")
        token = s.token("demo-agent", team="demo", ttl=600)
        print(f"   OPENAI_API_KEY={_mask(token)}   HTTPS_PROXY={s.proxy}")
        with openai.OpenAI(api_key=token, base_url="https://api.openai.com/v1",
                           http_client=openai.DefaultHttpxClient(
                               proxy=s.proxy, verify=s.agent_ssl_context())) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
        answer = raw.parse()
        print(f"   client.chat.completions.create(...) -> "
              f"{answer.choices[0].message.content!r}")

        _step(4, "What the vendor received")
        got = s.received()[-1]
        auth = [v for k, v in got["headers"] if k.lower() == "authorization"]
        print(f"   Authorization: Bearer {_mask(auth[0].removeprefix('Bearer '))}"
              f"   (the real key: {auth == ['Bearer ' + real_key]})")
        print(f"   the agent's token anywhere in the request: {token in str(got)}")

        _step(5, "The audit record, on disk before the agent had its answer")
        rid = raw.headers["x-egressguard-request-id"]
        record = next(r for r in s.records() if r["id"] == rid)
        print(textwrap.indent(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode(),
                              "   "))

        _step(6, "egressguard audit verify")
        verify = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "verify",
                                 str(s.journal)], capture_output=True, text=True, check=False)
        print("   " + (verify.stdout or verify.stderr).strip())
        ok = auth == ["Bearer " + real_key] and token not in str(got) and verify.returncode == 0
    print(f"\n{'demo OK' if ok else 'demo FAILED'}: everything started for it has been stopped.")
    return 0 if ok else 1
