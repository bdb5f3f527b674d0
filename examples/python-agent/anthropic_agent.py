"""An agent on the anthropic SDK, its client given the proxy and the CA in code: for a
process whose environment cannot change, or where only this client may use egressguard.
"""

import os
import ssl

import anthropic

client = anthropic.Anthropic(
    api_key=os.environ["EGRESSGUARD_TOKEN"],  # the token, never a vendor key
    http_client=anthropic.DefaultHttpxClient(
        proxy=os.environ.get("EGRESSGUARD_PROXY", "http://127.0.0.1:8080"),
        verify=ssl.create_default_context(
            cafile=os.environ.get("EGRESSGUARD_CA", "certs/egressguard-ca.pem")
        ),
    ),
)
message = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=256,
    messages=[{"role": "user", "content": "Say hello"}],
)
print(message.content[0].text)
