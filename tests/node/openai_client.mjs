// The openai npm package against the proxy: one plain and one streamed legacy completion.
// usage: node openai_client.mjs <base-url> <api-key> <model> <prompt> [suffix]
// Prints one JSON line {"plain": text, "streamed": text, "chunks": N}.
import OpenAI from "openai";

const [baseURL, apiKey, model, prompt, suffix] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, timeout: 60000, maxRetries: 0 });
const request = { model, prompt, max_tokens: 8, temperature: 0 };
if (suffix !== undefined) request.suffix = suffix;

const plain = await client.completions.create(request);
let streamed = "";
let chunks = 0;
for await (const chunk of await client.completions.create({ ...request, stream: true })) {
  chunks += 1;
  streamed += chunk.choices?.[0]?.text ?? "";
}
process.stdout.write(JSON.stringify({ plain: plain.choices[0].text, streamed, chunks }) + "\n");
