// Drive tabby-agent as an editor would: a language server over stdio.
// usage: node tabby_lsp.mjs <file-uri> <language> <text-file> <line> <character> [timeout-ms]
// The agent reads its server endpoint and token from $HOME/.tabby-client/agent/config.toml.
// Prints one JSON line: {"items": [...completion items...], "requests": N} and exits 0,
// or prints the last error and exits 1 when no completion arrived before the deadline.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [uri, languageId, textFile, line, character, timeoutArg] = process.argv.slice(2);
const deadline = Date.now() + Number(timeoutArg || 60000);
const require = createRequire(import.meta.url);
const cli = require.resolve("tabby-agent/dist/cli.js");
const agent = spawn(process.execPath, [cli, "--lsp", "--stdio"], { stdio: ["pipe", "pipe", "inherit"] });

let nextId = 1;
const pending = new Map();
let buffer = Buffer.alloc(0);

function send(message) {
  const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message }), "utf8");
  agent.stdin.write(`Content-Length: ${body.length}\r\n\r\n`);
  agent.stdin.write(body);
}
function request(method, params) {
  const id = nextId++;
  send({ id, method, params });
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}
function notify(method, params) { send({ method, params }); }

agent.stdout.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const end = buffer.indexOf("\r\n\r\n");
    if (end < 0) return;
    const match = /Content-Length: (\d+)/i.exec(buffer.subarray(0, end).toString());
    const length = Number(match[1]);
    if (buffer.length < end + 4 + length) return;
    const msg = JSON.parse(buffer.subarray(end + 4, end + 4 + length).toString("utf8"));
    buffer = buffer.subarray(end + 4 + length);
    if (msg.id !== undefined && pending.has(msg.id) && msg.method === undefined) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
    } else if (msg.id !== undefined && msg.method !== undefined) {
      send({ id: msg.id, result: null }); // server-to-client requests (configuration, progress)
    }
  }
});

async function main() {
  await request("initialize", {
    processId: process.pid,
    clientInfo: { name: "repotune-test", version: "1" },
    capabilities: { textDocument: { completion: {} }, workspace: { configuration: false } },
    workspaceFolders: null,
  });
  notify("initialized", {});
  const text = readFileSync(textFile, "utf8");
  notify("textDocument/didOpen", { textDocument: { uri, languageId, version: 1, text } });
  let requests = 0;
  let lastError = "no completion";
  while (Date.now() < deadline) {
    requests += 1;
    try {
      const result = await request("textDocument/completion", {
        textDocument: { uri },
        position: { line: Number(line), character: Number(character) },
        context: { triggerKind: 1 },
      });
      const items = Array.isArray(result) ? result : result?.items ?? [];
      if (items.length > 0) {
        process.stdout.write(JSON.stringify({ items, requests }) + "\n");
        return 0;
      }
      lastError = `empty result: ${JSON.stringify(result)}`;
    } catch (err) {
      lastError = String(err);
    }
    await new Promise((r) => setTimeout(r, 250)); // the agent connects to the server in the background
  }
  process.stderr.write(`tabby_lsp: ${lastError}\n`);
  return 1;
}

main().then((code) => { agent.kill(); process.exit(code); }, (err) => {
  process.stderr.write(`tabby_lsp: ${err}\n`); agent.kill(); process.exit(1);
});
