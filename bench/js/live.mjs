// Many `mode=live` gateway clients in one Node process, for the burst benchmark (bench/burst.py).
//
//   node live.mjs '<json config>'
//
// config: {"url": "http://127.0.0.1:3001", "sio": 500, "ws": 500, "batch": 50, "maxRate": 100}
//
// Opens `sio` socket.io-client connections (the seed's options plus auth {mode: "live", maxRate})
// and `ws` plain WebSocket connections to /ws?mode=live&maxRate=..., `batch` at a time. Each client
// counts the frames it receives, the records `records-skipped` says it was left out, the records it
// got only part of (an event of a record whose message-received it never got: the contract says a
// record comes whole or not at all), its disconnects, and keeps the newest stats-updated counts.
//
// stdout, one JSON line each: {"type": "ready", "connected", "failed", "seconds"} once all are open;
// answers to commands. stdin commands, one JSON line each:
//   {"cmd": "start"}   reset the counters: the measured window begins
//   {"cmd": "stop"}    the window ends (frames still count for the totals, not for the rate)
//   {"cmd": "report"}  -> {"type": "report", "seconds", "clients": [...]}
// Exits when stdin closes.
import { io } from "socket.io-client";
import WebSocket from "ws";
import { openInterleaved } from "./open_all.mjs";
import { createInterface } from "node:readline";

const config = JSON.parse(process.argv[2] || "{}");
const url = config.url;
const maxRate = config.maxRate ?? 100;
const wsUrl = `${url.replace(/^http/, "ws")}/ws?mode=live&maxRate=${maxRate}`;
const RECORD_EVENTS = new Set(["message-received", "processing-started", "processing-completed", "processing-failed"]);
const now = () => performance.timeOrigin + performance.now();
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");

let closing = false;
let windowStart = 0;
let windowEnd = 0;
const clients = [];

function newClient(kind) {
  return {
    kind, frames: 0, windowFrames: 0, frozen: null, records: 0, skipped: 0, partial: 0,
    disconnects: 0, connected: false, total: null, processed: null, failed: null, open: new Set(),
  };
}

function onEvent(client, name, data) {
  client.frames += 1;
  if (windowStart && !windowEnd) client.windowFrames += 1;
  if (!data) return;
  if (name === "stats-updated") {
    client.total = data.totalMessages;
    client.processed = data.processedMessages;
    client.failed = data.failedMessages;
  } else if (name === "records-skipped") {
    client.skipped += Number(data.count) || 0;
  } else if (RECORD_EVENTS.has(name)) {
    if (name === "message-received") {
      client.records += 1;
      client.open.add(data.logId);
    } else if (!client.open.has(data.logId)) {
      client.partial += 1;
    } else if (name !== "processing-started") {
      client.open.delete(data.logId);
    }
  }
}

function settleOnce(resolve) {
  let settled = false;
  return (ok) => {
    if (!settled) {
      settled = true;
      resolve(ok);
    }
  };
}

function openSocketIO(client) {
  return new Promise((resolve) => {
    const settle = settleOnce(resolve);
    const socket = io(url, {
      transports: ["websocket", "polling"],
      reconnection: true,
      reconnectionDelay: 1000,
      reconnectionAttempts: 5,
      forceNew: true,
      auth: { mode: "live", maxRate },
    });
    socket.on("connect", () => {
      client.connected = true;
      settle(true);
    });
    socket.on("connect_error", () => settle(false));
    socket.on("disconnect", () => {
      client.connected = false;
      if (!closing) client.disconnects += 1;
    });
    socket.onAny((name, data) => onEvent(client, name, data));
    client.close = () => socket.disconnect();
    setTimeout(() => settle(false), 15_000);
  });
}

function openWebSocket(client) {
  return new Promise((resolve) => {
    const settle = settleOnce(resolve);
    const ws = new WebSocket(wsUrl);
    client.close = () => ws.close();
    ws.on("open", () => {
      client.connected = true;
      settle(true);
    });
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      onEvent(client, frame.event, frame.data);
    });
    ws.on("error", () => settle(false));
    ws.on("close", () => {
      if (client.connected && !closing) client.disconnects += 1;
      client.connected = false;
    });
    setTimeout(() => settle(false), 15_000);
  });
}

async function openAll() {
  const started = now();
  const failed = await openInterleaved(config, (kind) => {
    const client = newClient(kind);
    clients.push(client);
    return kind === "sio" ? openSocketIO(client) : openWebSocket(client);
  });
  const connected = clients.filter((c) => c.connected).length;
  out({ type: "ready", connected, failed, seconds: (now() - started) / 1000 });
}

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (!line.trim()) return;
  const { cmd } = JSON.parse(line);
  if (cmd === "start") {
    for (const c of clients) c.windowFrames = 0;
    windowStart = now();
    windowEnd = 0;
  } else if (cmd === "stop") {
    windowEnd = now();
  } else if (cmd === "report") {
    out({
      type: "report",
      seconds: ((windowEnd || now()) - windowStart) / 1000,
      clients: clients.map(({ open, close, ...c }) => c),
    });
  }
});
commands.on("close", () => {
  closing = true;
  for (const c of clients) c.close?.();
  setTimeout(() => process.exit(0), 200);
});

openAll();
