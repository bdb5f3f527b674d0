#!/bin/sh
# One chat completion with curl through egressguard: the proxy from HTTPS_PROXY (curl
# reads it; the token may ride in it as AGENT:TOKEN), egressguard's CA with --cacert,
# and the token as the bearer key.
curl -sS --fail-with-body --cacert "${EGRESSGUARD_CA:-certs/egressguard-ca.pem}" \
  -H "Authorization: Bearer $EGRESSGUARD_TOKEN" -H "Content-Type: application/json" \
  -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}' \
  https://api.openai.com/v1/chat/completions
