#!/usr/bin/env node
// A WebSocket client on Node's `ws` library, with permessage-deflate enabled,
// driven by tests/test_deflate_integration.py.
//
//   node ws_client.mjs URL COUNT [--send] [--timeout SECONDS]
//
// Connects to URL offering permessage-deflate (ws' own offer:
// "permessage-deflate; client_max_window_bits"), prints the line "open" once
// the connection is open, collects COUNT messages, closes with 1000 and
// prints one JSON line:
//
//   {"extensions": "<the server's Sec-WebSocket-Extensions header>",
//    "messages": [{"text": "..."} | {"binary": "<base64>"}, ...],
//    "close": <close code>}
//
// With --send, it also reads JSON lines from standard input after "open",
// each {"text": "..."} or {"binary": "<base64>"}, and sends each as a message
// (so against an echo server the collected messages are the echoes).
// Exits with status 2 (and a message on stderr) after --timeout seconds
// (default 20) or on an error.

import WebSocket from 'ws';
import readline from 'node:readline';

const args = process.argv.slice(2);
const positional = [];
let send = false;
let timeout = 20;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--send') send = true;
  else if (args[i] === '--timeout') timeout = Number(args[++i]);
  else positional.push(args[i]);
}
if (positional.length !== 2 || !Number.isInteger(Number(positional[1]))) {
  process.stderr.write('usage: node ws_client.mjs URL COUNT [--send] [--timeout SECONDS]\n');
  process.exit(64);
}
const [url, countArg] = positional;
const count = Number(countArg);

function fail(message) {
  process.stderr.write(`ws_client: ${message}\n`);
  process.exit(2);
}

const timer = setTimeout(() => fail(`timed out after ${timeout} s`), timeout * 1000);

const messages = [];
let extensions = null;
let closing = false;

const ws = new WebSocket(url, { perMessageDeflate: true, maxPayload: 64 * 1024 * 1024 });

ws.on('upgrade', (res) => {
  extensions = res.headers['sec-websocket-extensions'] ?? null;
});

function finishIfDone() {
  if (!closing && messages.length >= count) {
    closing = true;
    ws.close(1000);
  }
}

ws.on('open', () => {
  process.stdout.write('open\n');
  if (send) {
    const lines = readline.createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      if (!line.trim()) return;
      const item = JSON.parse(line);
      if (typeof item.text === 'string') ws.send(item.text, { binary: false });
      else ws.send(Buffer.from(item.binary, 'base64'), { binary: true });
    });
  }
  finishIfDone();
});

ws.on('message', (data, isBinary) => {
  const buffer = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
  messages.push(isBinary ? { binary: buffer.toString('base64') } : { text: buffer.toString('utf8') });
  finishIfDone();
});

ws.on('error', (err) => fail(`error: ${err.message}`));

ws.on('close', (code) => {
  clearTimeout(timer);
  if (messages.length < count) fail(`closed (${code}) after ${messages.length} of ${count} messages`);
  const line = JSON.stringify({ extensions, messages, close: code }) + '\n';
  process.stdout.write(line, () => process.exit(0));
});
