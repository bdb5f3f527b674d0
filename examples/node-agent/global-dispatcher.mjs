// The same, for every fetch in the process (the SDK's and any other library's): set
// undici's proxy agent as the global dispatcher before the first request.
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";
import OpenAI from "openai";

setGlobalDispatcher(new EnvHttpProxyAgent());

const client = new OpenAI();
const answer = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello" }],
});
console.log(answer.choices[0].message.content);
