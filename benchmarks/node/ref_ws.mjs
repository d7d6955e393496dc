// Reference gateway for the fan-out benchmark (stack "node"): Node's `ws` + `zeromq` (v6).
//
// Written the usual way: a zeromq Subscriber read with `for await`, and each message sent to
// every open client with `client.send(payload, { binary: true })`, the broadcast of ws's README
// ("Server broadcast": `wss.clients.forEach(...)`).  No compression (`perMessageDeflate: false`);
// ws answers pings by itself.  After each message the loop yields to the event loop
// (`setImmediate`), as the Python references do with `asyncio.sleep(0)`: a `for await` over a
// backlog of already received messages never lets libuv flush the sockets or read the clients.
//
//     node benchmarks/node/ref_ws.mjs --sub tcp://127.0.0.1:5556 --port 8765 [--rcvhwm 100000]
import { WebSocketServer, WebSocket } from "ws";
import * as zmq from "zeromq";

const args = { host: "127.0.0.1", rcvhwm: 100000 };
for (let i = 2; i + 1 < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
}
if (!args.sub || !args.port) {
  console.error("usage: ref_ws.mjs --sub ENDPOINT --port P [--host H] [--rcvhwm N]");
  process.exit(2);
}

const wss = new WebSocketServer({ host: args.host, port: Number(args.port), backlog: 1024,
                                  perMessageDeflate: false });
const sub = new zmq.Subscriber({ receiveHighWaterMark: Number(args.rcvhwm), linger: 0 });
sub.connect(args.sub);
sub.subscribe();

const yieldToLoop = () => new Promise((resolve) => setImmediate(resolve));
let stopping = false;
process.on("SIGTERM", () => {
  stopping = true;
  sub.close();
  for (const client of wss.clients) client.terminate();
  wss.close(() => process.exit(0));
});

try {
  for await (const parts of sub) {
    const payload = parts[parts.length - 1];
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(payload, { binary: true });
    }
    await yieldToLoop();
  }
} catch (err) {
  if (!stopping) throw err;
}
