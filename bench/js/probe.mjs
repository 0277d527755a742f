// One real socket.io-client, for the end-to-end latency and idle-bytes benchmarks.
//
//   node probe.mjs '<json config>'
//
// config: {"url": "http://127.0.0.1:3001", "events": ["message-received", ...]}
//
// Connects with the seed's options and writes one JSON line per happening to stdout:
//   {"type": "connect", "at", "transport", "pingInterval"}   once connected (Engine.IO's ping interval, ms)
//   {"type": "event", "at", "name", "data", "seq"}            for each event named in config.events
//   {"type": "disconnect" | "connect_error", "at", "reason"}
// "at" is the epoch time of receipt in milliseconds, with sub-millisecond precision.
// Exits when stdin closes.
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2] || "{}");
const wanted = new Set(config.events || []);
const now = () => performance.timeOrigin + performance.now();
const out = (record) => process.stdout.write(JSON.stringify({ at: now(), ...record }) + "\n");

const socket = io(config.url, {
  transports: ["websocket", "polling"],
  reconnection: true,
  reconnectionDelay: 1000,
  reconnectionAttempts: 5,
  forceNew: true,
});

socket.on("connect", () => {
  const engine = socket.io.engine;
  out({ type: "connect", transport: engine.transport.name, pingInterval: engine._pingInterval ?? null });
});
socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
socket.on("connect_error", (err) => out({ type: "connect_error", reason: err.message }));
socket.onAny((name, data, seq) => {
  if (wanted.has(name)) out({ type: "event", name, data, seq: typeof seq === "number" ? seq : null });
});

process.stdin.on("data", () => {});
process.stdin.on("end", () => {
  socket.disconnect();
  process.exit(0);
});
