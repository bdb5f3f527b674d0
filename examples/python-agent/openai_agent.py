"""An agent on the openai SDK, through egressguard, set up by its environment alone:
HTTPS_PROXY (the proxy, `http://AGENT:TOKEN@HOST:PORT` or without the credentials),
SSL_CERT_FILE (system roots plus egressguard's CA: `egressguard ca path --bundle`) and
OPENAI_API_KEY (the egressguard token). The code is what it would be without egressguard.
"""

from openai import OpenAI

client = OpenAI()
answer = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
)
print(answer.choices[0].message.content)
