"""The example agent of deploy/compose.yaml: the official openai SDK, unchanged, through
egressguard.

It holds only its egressguard token, used as the API key; the container's environment
does the rest (HTTPS_PROXY: the load balancer in front of the proxies; SSL_CERT_FILE:
system roots + egressguard's CA). It is on a network with no way out but the proxy.
It asks one question and prints the answer, or what egressguard said and the id of
the audit record (`x-egressguard-request-id`), e.g. until a real key is stored:
503 secret_missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import openai


def main() -> int:
    token = Path(os.environ.get("EGRESSGUARD_TOKEN_FILE", "/run/egressguard/token"))
    client = openai.OpenAI(api_key=token.read_text().strip(), max_retries=0)
    try:
        answer = client.chat.completions.create(
            model=os.environ.get("MODEL", "gpt-4o-mini"),
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=32,
        )
    except openai.APIStatusError as exc:
        request_id = exc.response.headers.get("x-egressguard-request-id", "-")
        print(f"refused: {exc.status_code} {exc.message} (audit record {request_id})",
              file=sys.stderr)
        return 1
    except openai.APIConnectionError as exc:
        print(f"could not reach the proxy: {exc}", file=sys.stderr)
        return 1
    print(answer.choices[0].message.content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
