#!/usr/bin/env node
// The Socket.IO fan-out benchmark's load client (run by socketio_fanout.py).
//
//   node sio_loadclient.mjs --port P --conns C --messages N [--mode sio|raw]
//                           [--timeout S] [--idle S] [--connect-timeout S]
//
// Opens C Socket.IO connections over WebSocket only to 127.0.0.1:P, in one of two ways:
//
//   sio  the real socket.io-client (v4, from tests/node/node_modules), one Manager per
//        connection (forceNew), transports ["websocket"]: what an application would run;
//   raw  the `ws` package speaking the minimal Engine.IO v4 / Socket.IO v5 handshake by hand:
//        GET /socket.io/?EIO=4&transport=websocket, read "0{...}", send "40", read "40{...}",
//        answer "2" pings with "3", count the "42[" frames: cheaper per message, for when
//        socket.io-client itself cannot keep up with the gateway.
//
// Prints "READY <C> <seconds to connect>" once every connection has its CONNECT answer, then
// counts the events "message" whose first argument starts with a 10-digit sequence number,
// checks their order per connection (gaps = missing or out-of-order numbers), and ends when
// every connection has N, or after --idle seconds without an event, or --timeout seconds.
// Last line: one JSON object {received, gaps, window_s, cpu_window_s, connected, ...}.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/node/package.json', import.meta.url));

const opts = { port: 0, conns: 100, messages: 1000, mode: 'sio', timeout: 120, idle: 5, 'connect-timeout': 60 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, '');
  opts[key] = key === 'mode' ? argv[i + 1] : Number(argv[i + 1]);
}
const { port, conns, messages, mode } = opts;

const counts = new Int32Array(conns);
const nextSeq = new Int32Array(conns);
let received = 0;
let gaps = 0;
let connected = 0;
let first = 0;
let last = 0;
let cpuAtFirst = null;
let done = false;
let lastEventAt = 0;
const t0 = performance.now();
const sockets = [];

function onEvent(i, data) {
  const now = performance.now();
  if (first === 0) {
    first = now;
    cpuAtFirst = process.cpuUsage();
  }
  last = now;
  lastEventAt = now;
  const seq = Number(data.slice(0, 10));
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
  process.stdout.write(JSON.stringify({
    reason, mode, conns, messages, received, gaps, connected, complete,
    window_s: window, cpu_window_s: cpuAtFirst ? (cpu.user + cpu.system) / 1e6 : 0,
    elapsed_s: (performance.now() - t0) / 1000,
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
    transports: ['websocket'], forceNew: true, reconnection: false, timeout: opts['connect-timeout'] * 1000,
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
    if (isBinary) return;
    const c0 = buf[0];
    if (c0 === 0x34) {  // "4": a message
      if (buf[1] === 0x32) {  // "42": an EVENT; '42["message","' is 14 characters
        onEvent(i, buf.toString('latin1', 14, 24));
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
