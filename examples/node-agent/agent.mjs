// An agent on the `openai` npm SDK, through egressguard. Node's fetch does not read
// HTTPS_PROXY, so the SDK is given undici's fetch with a dispatcher that does (and
// NO_PROXY); the CA comes from NODE_EXTRA_CA_CERTS; OPENAI_API_KEY is the egressguard
// token. Nothing else changes.
import OpenAI from "openai";
import { EnvHttpProxyAgent, fetch } from "undici";

const client = new OpenAI({
  fetch,
  fetchOptions: { dispatcher: new EnvHttpProxyAgent() },
});

const answer = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello" }],
});
console.log(answer.choices[0].message.content);
