#!/usr/bin/env node
// The Socket.IO fan-out benchmark's load client (run by socketio_fanout.py).
//
//   node sio_loadclient.mjs --port P --conns C --messages N [--mode sio|raw]
//                           [--transport websocket|polling] [--sample-every K]
//                           [--timeout S] [--idle S] [--connect-timeout S]
//
// Opens C Socket.IO connections to 127.0.0.1:P, in one of two ways:
//
//   sio  the real socket.io-client (v4, from tests/node/node_modules), one Manager per
//        connection (forceNew), on one transport only: transports ["websocket"] (the
//        default) or ["polling"] (--transport polling: Engine.IO long-polling, no upgrade):
//        what an application would run;
//   raw  the `ws` package speaking the minimal Engine.IO v4 / Socket.IO v5 handshake by hand
//        (WebSocket only): GET /socket.io/?EIO=4&transport=websocket, read "0{...}", send
//        "40", read "40{...}", answer "2" pings with "3", count the "42[" frames (and the
//        binary attachment frame that follows each "45" one): cheaper per message, for when
//        socket.io-client itself cannot keep up with the gateway.
//
// Prints "READY <C> <seconds to connect>" once every connection has its CONNECT answer, then
// counts the events "message" and checks their order per connection (gaps = missing or
// out-of-order numbers).  A text argument starts with a 10-digit sequence number
// (socketio_fanout.py's publisher); a binary one (an attachment) is publisher.py's payload:
// bytes 0..7 the send time (CLOCK_MONOTONIC ns, little-endian), 8..15 the sequence number,
// and every --sample-every'th connection records the latency of each such event
// (process.hrtime, also CLOCK_MONOTONIC).  Ends when every connection has N, or after --idle
// seconds without an event, or --timeout seconds.
// Last line: one JSON object {received, gaps, window_s, cpu_window_s, connected, lat_p50_ms, ...}.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/node/package.json', import.meta.url));

const opts = {
  port: 0, conns: 100, messages: 1000, mode: 'sio', transport: 'websocket', 'sample-every': 10,
  timeout: 120, idle: 5, 'connect-timeout': 60,
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, '');
  opts[key] = key === 'mode' || key === 'transport' ? argv[i + 1] : Number(argv[i + 1]);
}
const { port, conns, messages, mode, transport } = opts;
if (mode === 'raw' && transport !== 'websocket') {
  process.stderr.write('sio_loadclient: --mode raw speaks WebSocket only\n');
  process.exit(2);
}
const sampleEvery = opts['sample-every'];

const counts = new Int32Array(conns);
const nextSeq = new Int32Array(conns);
const attachment = new Uint8Array(conns);  // raw: a "45" packet came, its binary frame is next
const latencies = [];  // ms, of the events of every --sample-every'th connection
let received = 0;
let gaps = 0;
let connected = 0;
let first = 0;
let last = 0;
let cpuAtFirst = null;
let done = false;
let lastEventAt = 0;
const t0 = performance.now();
const monoOffset = Number(process.hrtime.bigint()) / 1e9 - t0 / 1000;  // CLOCK_MONOTONIC s - performance.now() s
const sockets = [];

// The sequence number of an event's argument: text "0000000042 ..." or publisher.py's binary
// header (then the latency is sampled on every --sample-every'th connection).
function sequence(i, data) {
  if (typeof data === 'string') return Number(data.slice(0, 10));
  const view = data instanceof ArrayBuffer ? new DataView(data)
    : new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (sampleEvery > 0 && i % sampleEvery === 0) {
    const sent = view.getBigUint64(0, true);
    latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
  }
  return Number(view.getBigUint64(8, true));
}

function percentile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : -1;
}

function onEvent(i, data) {
  const now = performance.now();
  if (first === 0) {
    first = now;
    cpuAtFirst = process.cpuUsage();
  }
  last = now;
  lastEventAt = now;
  const seq = sequence(i, data);
  if (seq !== nextSeq[i]) gaps += Math.abs(seq - nextSeq[i]);
  nextSeq[i] = seq + 1;
  counts[i]++;
  received++;
  if (received === conns * messages) finish('complete');
}

function finish(reason) {
  if (done) return;
  done = true;
  const cpu = process.cpuUsage(cpuAtFirst ?? undefined);
  const window = (last - first) / 1000;
  let complete = 0;
  for (let i = 0; i < conns; i++) if (counts[i] >= messages) complete++;
  const sorted = Float64Array.from(latencies).sort();
  process.stdout.write(JSON.stringify({
    reason, mode, transport, conns, messages, received, gaps, connected, complete,
    window_s: window, cpu_window_s: cpuAtFirst ? (cpu.user + cpu.system) / 1e6 : 0,
    elapsed_s: (performance.now() - t0) / 1000,
    first_abs_s: first ? monoOffset + first / 1000 : -1, last_abs_s: first ? monoOffset + last / 1000 : -1,
    lat_samples: sorted.length, lat_p50_ms: percentile(sorted, 0.5), lat_p99_ms: percentile(sorted, 0.99),
    lat_max_ms: sorted.length ? sorted[sorted.length - 1] : -1,
  }) + '\n', () => process.exit(0));
}

function ready() {
  connected++;
  if (connected === conns) {
    process.stdout.write(`READY ${conns} ${((performance.now() - t0) / 1000).toFixed(3)}\n`);
    lastEventAt = performance.now();
  }
}

function openSio(i) {
  const { io } = require('socket.io-client');
  const socket = io(`http://127.0.0.1:${port}`, {
    transports: [transport], forceNew: true, reconnection: false, timeout: opts['connect-timeout'] * 1000,
  });
  socket.once('connect', ready);
  socket.on('message', (data) => onEvent(i, data));
  socket.on('connect_error', (err) => {
    process.stderr.write(`connection ${i}: ${err.message}\n`);
  });
  sockets.push(socket);
}

function openRaw(i) {
  const WebSocket = require('ws');
  const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`,
                           { perMessageDeflate: false });
  ws.on('message', (buf, isBinary) => {
    if (isBinary) {  // the attachment of a "45" BINARY_EVENT: the event's argument
      if (attachment[i]) {
        attachment[i] = 0;
        onEvent(i, buf);
      }
      return;
    }
    const c0 = buf[0];
    if (c0 === 0x34) {  // "4": a message
      if (buf[1] === 0x32) {  // "42": an EVENT; '42["message","' is 14 characters
        onEvent(i, buf.toString('latin1', 14, 24));
      } else if (buf[1] === 0x35) {  // '451-["message",{"_placeholder":true,"num":0},...]'
        attachment[i] = 1;
      } else if (buf[1] === 0x30) {  // "40{...}": connected
        ready();
      }
    } else if (c0 === 0x32) {  // "2": ping
      ws.send('3');
    } else if (c0 === 0x30) {  // "0{...}": open
      ws.send('40');
    }
  });
  ws.on('error', (err) => process.stderr.write(`connection ${i}: ${err.message}\n`));
  sockets.push(ws);
}

// open the connections in small batches so that the listen backlog is never flooded
let opened = 0;
function openBatch() {
  const end = Math.min(conns, opened + 50);
  for (; opened < end; opened++) (mode === 'raw' ? openRaw : openSio)(opened);
  if (opened < conns) setTimeout(openBatch, 5);
}
openBatch();

setTimeout(() => {
  if (connected < conns) {
    process.stdout.write(`FAILED ${connected}/${conns} connected\n`);
    process.exit(1);
  }
}, opts['connect-timeout'] * 1000);
setTimeout(() => finish('timeout'), opts.timeout * 1000);
setInterval(() => {
  if (connected === conns && received > 0 && performance.now() - lastEventAt > opts.idle * 1000) finish('idle');
}, 100);
