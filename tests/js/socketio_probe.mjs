// The real socket.io-client from npm, driven by tests/test_socketio_client.py.
//
//   node socketio_probe.mjs <url> '<json config>'
//
// config: {"io": {...options passed to io() unchanged...},
//          "token": "...",          // sent as auth: {token}
//          "trackLastSeq": true,    // sent as auth: {lastSeq} on every (re)connect: the newest seq seen
//          "auth": {...}}           // more auth fields, e.g. {"mode": "live", "maxRate": 5, "topics": [...]}
//
// Writes one JSON line per happening to stdout: {"type": "open" | "upgrade" | "connect" | "disconnect" |
// "connect_error" | "reconnect_attempt" | "reconnect_failed" | "event" | "handler", ...}. "event" lines
// carry every argument as received (the seq is the extra last one); "handler" lines show what a
// seed-style handler that takes one argument sees. Reads commands from stdin, one JSON line each:
// {"cmd": "disconnect"}, {"cmd": "connect"}, {"cmd": "exit"}. Exits when stdin closes.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const [, , url, configJson] = process.argv;
const config = JSON.parse(configJson || "{}");
const SEED_EVENTS = [
  "connection-success",
  "message-received",
  "processing-started",
  "processing-completed",
  "processing-failed",
  "stats-updated",
  "consumer-status-changed",
];

function out(record) {
  process.stdout.write(JSON.stringify({ at: Date.now(), ...record }) + "\n");
}

let lastSeq = typeof config.lastSeq === "number" ? config.lastSeq : null;
const options = { ...(config.io || {}) };
if (config.token !== undefined || config.trackLastSeq || config.auth) {
  // The function form is called on every (re)connection, so a reconnect sends the current lastSeq.
  options.auth = (cb) => {
    const auth = { ...(config.auth || {}) };
    if (config.token !== undefined) auth.token = config.token;
    if (config.trackLastSeq && lastSeq !== null) auth.lastSeq = lastSeq;
    cb(auth);
  };
}

const socket = io(url, options);

// The Engine.IO connection opens on its first transport, and may upgrade before Socket.IO connects.
socket.io.on("open", () => {
  const engine = socket.io.engine;
  out({ type: "open", transport: engine.transport.name });
  engine.once("upgrade", (transport) => out({ type: "upgrade", transport: transport.name }));
});
socket.on("connect", () => {
  out({ type: "connect", id: socket.id, transport: socket.io.engine.transport.name, lastSeq });
});
socket.on("disconnect", (reason, details) =>
  out({ type: "disconnect", reason, description: details ? String(details.description ?? "") : "" }),
);
socket.on("connect_error", (err) =>
  out({ type: "connect_error", message: err.message, description: String(err.description ?? "") }),
);
socket.io.on("reconnect_attempt", (attempt) => out({ type: "reconnect_attempt", attempt }));
socket.io.on("reconnect_failed", () => out({ type: "reconnect_failed" }));

socket.onAny((name, ...args) => {
  const seq = args.length > 1 ? args[args.length - 1] : null;
  if (typeof seq === "number") lastSeq = lastSeq === null ? seq : Math.max(lastSeq, seq);
  out({ type: "event", name, args });
});
// The seed's handlers take one argument: they must see the payload object, not the seq.
for (const name of SEED_EVENTS) {
  socket.on(name, (data) => out({ type: "handler", name, data }));
}

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (!line.trim()) return;
  const { cmd } = JSON.parse(line);
  if (cmd === "disconnect") {
    socket.disconnect();
    out({ type: "disconnected-by-command" });
  } else if (cmd === "connect") {
    socket.connect();
  } else if (cmd === "exit") {
    socket.disconnect();
    process.exit(0);
  }
});
commands.on("close", () => {
  socket.disconnect();
  process.exit(0);
});
