// Many concurrent gateway clients in one Node process, for the fan-out benchmark.
//
//   node fanout.mjs '<json config>'
//
// config: {"url": "http://127.0.0.1:3001", "sio": 500, "ws": 500, "batch": 50}
//
// Opens `sio` socket.io-client connections (the seed's options, one Engine.IO connection each) and
// `ws` plain WebSocket connections to /ws, `batch` at a time. Every client checks that the `seq` of
// the events it receives increases by exactly one (a jump counts the skipped events as missing), and
// measures each event's latency: receipt time minus the event's `timestamp` (the server's clock at
// the event's creation, ISO-8601 with milliseconds; same machine, same clock).
//
// stdout, one JSON line each: {"type": "ready", "connected", "failed", "seconds"} once all are open;
// answers to commands. stdin commands, one JSON line each:
//   {"cmd": "warmup"}  latencies from now on go to the warm-up histogram (reported apart)
//   {"cmd": "start"}   reset counters and the latency histogram: the measured window begins
//   {"cmd": "stop"}    freeze the per-client event counts: the window ends (latency keeps counting
//                      events still in flight)
//   {"cmd": "status"}  -> {"type": "status", "minLast", "maxLast", "connected"}
//   {"cmd": "report"}  -> {"type": "report", ...}
// Exits when stdin closes.
import { io } from "socket.io-client";
import WebSocket from "ws";
import { openInterleaved } from "./open_all.mjs";
import { createInterface } from "node:readline";

const config = JSON.parse(process.argv[2] || "{}");
const url = config.url;
const wsUrl = url.replace(/^http/, "ws") + "/ws";
const HIST_MAX = 10_000; // ms; later ones land in the last bucket
const now = () => performance.timeOrigin + performance.now();
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");

let measuring = false;
let closing = false;
let windowStart = 0;
let windowEnd = 0;
const hist = new Uint32Array(HIST_MAX + 1);
const warmupHist = new Uint32Array(HIST_MAX + 1);
let target = hist; // where latencies go: the warm-up's histogram, then the measured window's
const clients = [];

function newClient(kind) {
  return {
    kind, last: null, count: 0, frozen: null, missing: 0, dups: 0,
    disconnects: 0, connected: false, everConnected: false,
  };
}

// A position frame (connection-success, resync-required) says where the stream continues from.
function onPosition(client, seq) {
  if (client.last === null && typeof seq === "number") client.last = seq;
}

function onEvent(client, data, seq, at) {
  if (typeof seq !== "number") return;
  if (client.last !== null && seq <= client.last) {
    client.dups += 1;
    return;
  }
  if (client.last !== null) client.missing += seq - client.last - 1;
  client.last = seq;
  if (!measuring) return;
  client.count += 1;
  const created = data && typeof data.timestamp === "string" ? Date.parse(data.timestamp) : NaN;
  if (!Number.isNaN(created)) target[Math.min(Math.max(Math.round(at - created), 0), HIST_MAX)] += 1;
}

function openSocketIO(client) {
  return new Promise((resolve) => {
    const socket = io(url, {
      transports: ["websocket", "polling"],
      reconnection: true,
      reconnectionDelay: 1000,
      reconnectionAttempts: 5,
      forceNew: true, // one connection per client, not one multiplexed Manager
      // On a reconnection, ask to be replayed from the newest seq seen.
      auth: (cb) => cb(client.last === null ? {} : { lastSeq: client.last }),
    });
    let settled = false;
    const settle = (ok) => {
      if (!settled) {
        settled = true;
        resolve(ok);
      }
    };
    socket.on("connect", () => {
      client.connected = client.everConnected = true;
      settle(true);
    });
    socket.on("connect_error", () => settle(false));
    socket.on("disconnect", () => {
      client.connected = false;
      if (!closing) client.disconnects += 1;
    });
    socket.onAny((name, data, seq) => {
      const at = now();
      if (name === "connection-success" || name === "resync-required") onPosition(client, seq);
      else onEvent(client, data, seq, at);
    });
    client.close = () => socket.disconnect();
    setTimeout(() => settle(false), 15_000);
  });
}

function openWebSocket(client) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (ok) => {
      if (!settled) {
        settled = true;
        resolve(ok);
      }
    };
    const connect = () => {
      const target = client.last === null ? wsUrl : `${wsUrl}?lastSeq=${client.last}`;
      const ws = new WebSocket(target);
      client.close = () => ws.close();
      ws.on("open", () => {
        client.connected = client.everConnected = true;
        settle(true);
      });
      ws.on("message", (raw) => {
        const at = now();
        const frame = JSON.parse(raw.toString());
        if (frame.event === "connection-success" || frame.event === "resync-required") {
          onPosition(client, frame.seq);
        } else {
          onEvent(client, frame.data, frame.seq, at);
        }
      });
      ws.on("error", () => settle(false));
      ws.on("close", () => {
        const was = client.connected;
        client.connected = false;
        if (closing) return;
        if (was) client.disconnects += 1;
        if (client.disconnects <= 5) setTimeout(connect, 1000); // reconnect with lastSeq, like Socket.IO
      });
    };
    connect();
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

function sparse(histogram) {
  const counts = {};
  histogram.forEach((count, ms) => {
    if (count) counts[ms] = count;
  });
  return counts;
}

function report() {
  const seconds = ((windowEnd || now()) - windowStart) / 1000;
  out({
    type: "report",
    seconds,
    histogram: sparse(hist),
    warmupHistogram: sparse(warmupHist),
    clients: clients.map((c) => ({
      kind: c.kind,
      last: c.last,
      count: c.frozen ?? c.count,
      missing: c.missing,
      dups: c.dups,
      disconnects: c.disconnects,
      connected: c.connected,
    })),
  });
}

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  if (!line.trim()) return;
  const { cmd } = JSON.parse(line);
  if (cmd === "warmup") {
    warmupHist.fill(0);
    target = warmupHist;
    measuring = true;
  } else if (cmd === "start") {
    hist.fill(0);
    target = hist;
    for (const c of clients) {
      c.count = 0;
      c.frozen = null;
    }
    windowStart = now();
    windowEnd = 0;
    measuring = true;
  } else if (cmd === "stop") {
    windowEnd = now();
    for (const c of clients) c.frozen = c.count;
  } else if (cmd === "status") {
    const lasts = clients.map((c) => c.last ?? -1);
    out({
      type: "status",
      minLast: Math.min(...lasts),
      maxLast: Math.max(...lasts),
      connected: clients.filter((c) => c.connected).length,
    });
  } else if (cmd === "report") {
    report();
  }
});
commands.on("close", () => {
  closing = true;
  for (const c of clients) c.close?.();
  setTimeout(() => process.exit(0), 200);
});

openAll();
