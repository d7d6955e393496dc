#!/usr/bin/env node
// A Socket.IO client on the real `socket.io-client` (v4), driven by tests/test_socketio.py
// and usable by hand.
//
//   node sio_client.mjs URL [OPTIONS_JSON]
//
// OPTIONS_JSON (every key optional):
//   transports   ["websocket"] | ["polling"] | ["polling", "websocket"] (default: the library's)
//   upgrade      false to stay on the first transport (default true)
//   auth         the CONNECT payload, e.g. {"topics": ["prices."]}
//   path         the Engine.IO path (default "/socket.io/")
//   count        finish once this many events have arrived (and every ack of `emits` too)
//   closeAfter   after this many events (and the rest of their payload), force the transport
//                closed once (socket.io.engine.close()): the manager reconnects and the socket asks for
//                connection state recovery with its pid and last offset
//   emits        [{"event": NAME, "args": [...], "ack": true}, ...] emitted after the first
//                connect, in order; an argument {"bin": BASE64} is sent as binary
//   until        also finish once an event whose data (first argument) equals this arrives
//   echo         true: print a line "event [NAME, DATA, OFFSET]" (JSON) for every event
//   stdin        true: also read commands, one JSON object a line, from standard input:
//                {"emit": NAME, "args": [...], "ack": true} | {"close_engine": true} | {"finish": true}
//                | {"disconnect": "/NAME"} (that namespace's socket only)
//   namespaces   {"/NAME": {"auth": {...}}, ...}: also open these namespaces on the same
//                connection (socket.io.socket(NAME)); their events count and are recorded too
//   timeout      seconds before giving up (exit status 2, partial result on stderr; default 20)
//
// Lines printed while running (one a line):
//   connect <transport> <recovered>        on every (re)connect of the socket
//   upgrade <transport>                    the engine switched transport (polling → websocket)
//   disconnect <reason>
//   ack <index> <JSON of the ack's arguments>
//   connect_error <message>
//   nsp-connect <namespace> <recovered> / nsp-disconnect <namespace> <reason>   (for "namespaces")
//   event [NAME, DATA, OFFSET]             with "echo"
// and at the end one JSON line:
//   {"events": [{"event", "data", "offset", "nsp"}], "connects": [{"transport", "recovered", "id"}],
//    "acks": {INDEX: [args]}, "upgrades": [...], "disconnects": [...], "transport": "..."}
// where "data" is the first argument: a string or JSON value as is, binary as {"bin": BASE64}.

import { io } from 'socket.io-client';
import readline from 'node:readline';

const [url, optionsArg] = process.argv.slice(2);
if (!url) {
  process.stderr.write('usage: node sio_client.mjs URL [OPTIONS_JSON]\n');
  process.exit(64);
}
const options = optionsArg ? JSON.parse(optionsArg) : {};
const count = options.count ?? 0;
const timeout = options.timeout ?? 20;

const result = { events: [], connects: [], acks: {}, upgrades: [], disconnects: [], transport: null };
let ackIndex = 0;
let acksPending = 0;
let closedOnce = false;
let finished = false;
let untilSeen = false;

function line(text) {
  process.stdout.write(text + '\n');
}

function encodeValue(value) {
  if (Buffer.isBuffer(value)) return { bin: value.toString('base64') };
  if (value instanceof ArrayBuffer) return { bin: Buffer.from(value).toString('base64') };
  if (ArrayBuffer.isView(value)) return { bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (Array.isArray(value)) return value.map(encodeValue);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(v)]));
  }
  return value;
}

function decodeArg(value) {
  if (value && typeof value === 'object' && !Array.isArray(value) && typeof value.bin === 'string'
      && Object.keys(value).length === 1) {
    return Buffer.from(value.bin, 'base64');
  }
  return value;
}

const socketOptions = {
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  timeout: 5000,
};
if (options.transports) socketOptions.transports = options.transports;
if (options.upgrade === false) socketOptions.upgrade = false;
if (options.auth) socketOptions.auth = options.auth;
if (options.path) socketOptions.path = options.path;

const socket = io(url, socketOptions);

const timer = setTimeout(() => {
  process.stderr.write(`sio_client: timed out after ${timeout} s; partial result: `
                       + JSON.stringify(result).slice(0, 4000) + '\n');
  process.exit(2);
}, timeout * 1000);

function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  result.transport = socket.io.engine ? socket.io.engine.transport.name : null;
  socket.disconnect();
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

function maybeFinish() {
  if ((untilSeen || (count > 0 && result.events.length >= count)) && acksPending === 0) finish();
}

function emit(event, args, wantAck) {
  const decoded = (args || []).map(decodeArg);
  if (wantAck) {
    const index = ackIndex++;
    acksPending++;
    socket.emit(event, ...decoded, (...ackArgs) => {
      const value = encodeValue(ackArgs);
      result.acks[index] = value;
      acksPending--;
      line(`ack ${index} ${JSON.stringify(value)}`);
      maybeFinish();
    });
  } else {
    socket.emit(event, ...decoded);
  }
}

function watchUpgrades() {
  const engine = socket.io.engine;
  if (engine && !engine.__watched) {
    engine.__watched = true;
    engine.on('upgrade', (t) => {
      result.upgrades.push(t.name);
      line(`upgrade ${t.name}`);
    });
  }
}
socket.io.on('open', watchUpgrades);  // every engine, the first and those after a reconnect

let connectedOnce = false;
socket.on('connect', () => {
  watchUpgrades();
  const transport = socket.io.engine.transport.name;
  result.connects.push({ transport, recovered: Boolean(socket.recovered), id: socket.id });
  line(`connect ${transport} ${Boolean(socket.recovered)}`);
  if (!connectedOnce) {
    connectedOnce = true;
    for (const item of options.emits || []) emit(item.event, item.args, item.ack);
  }
  maybeFinish();
});

socket.on('disconnect', (reason) => {
  result.disconnects.push(reason);
  line(`disconnect ${reason}`);
});

socket.on('connect_error', (err) => {
  line(`connect_error ${err.message}`);
});

function onEvent(nsp, event, args) {
  const offset = args.length > 1 && typeof args[args.length - 1] === 'string' ? args[args.length - 1] : null;
  const data = encodeValue(args[0]);
  result.events.push({ event, data, offset, nsp });
  if (options.echo) line(`event ${JSON.stringify([event, data, offset, nsp])}`);
  if (options.until !== undefined && data === options.until) untilSeen = true;
  if (options.closeAfter && !closedOnce && result.events.length >= options.closeAfter) {
    closedOnce = true;
    // After the rest of this payload: packets socket.io-client decodes after its own close are
    // buffered (not counted in its offset) and emitted after the reconnection, so a recovery
    // would get them twice from any server whose polling payloads carry several events.
    setTimeout(() => socket.io.engine.close(), 0);
  }
  maybeFinish();
}
socket.onAny((event, ...args) => onEvent(socket.nsp, event, args));

const others = {};
for (const [nsp, nspOptions] of Object.entries(options.namespaces || {})) {
  const other = socket.io.socket(nsp, nspOptions);
  others[nsp] = other;
  other.on('connect', () => line(`nsp-connect ${nsp} ${Boolean(other.recovered)}`));
  other.on('disconnect', (reason) => line(`nsp-disconnect ${nsp} ${reason}`));
  other.on('connect_error', (err) => line(`connect_error ${nsp} ${err.message}`));
  other.onAny((event, ...args) => onEvent(nsp, event, args));
  other.connect();
}

if (options.stdin) {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (text) => {
    if (!text.trim()) return;
    const command = JSON.parse(text);
    if (command.emit) emit(command.emit, command.args, command.ack);
    else if (command.close_engine) socket.io.engine.close();
    else if (command.disconnect) others[command.disconnect].disconnect();
    else if (command.finish) finish();
  });
}
