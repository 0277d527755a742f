// Live counters and live tail, updated in the browser without Streamlit reruns.
//
// Two sources feed one view, and the newest wins by sequence number:
//  * Python snapshots (the `data` of each fragment run, about once a second), which carry the
//    bus sequence number they reflect, and
//  * the gateway's /ws, subscribed here with ?lastSeq=<that number>, so the gateway replays
//    what happened since the snapshot and then streams each event as it happens.
// The /ws is a `mode=live` subscription (docs/CONTRACT.md): at most 10 stats-updated a second with
// the exact counts, and the events of at most LIVE_MAX_RATE records a second, each record whole;
// `records-skipped` says how many records were left out. So a burst of any size costs this page
// the same, and the gateway never cuts it off as slow. The counters and the rate come from
// stats-updated only (exact); the tail is a sample when records come faster than LIVE_MAX_RATE, and
// says so ("N records not shown").
// The counters and the tail share one /ws, and either may join it after it opened (Streamlit
// mounts them one after the other, and remounts one alone): the stream keeps its recent frames and
// hands a joining view those after the view's snapshot. A live stream does not replay records from
// before it connected; the snapshot Python sends when the stream opens (the page reruns once to
// slow its fragments down) covers them.
// When the browser cannot reach the gateway, the snapshots alone keep the view current.
// With AUTH_TOKEN set, the page never holds the token: each snapshot carries a fresh stream ticket
// (valid for opening a connection for 60 s), and every (re)connect uses the newest one received.
//
// Payload values are user data: they are only ever written with textContent.

const HUB = (window.__kafkaDashboardHub ||= { streams: new Map() });
const MIN_RENDER_GAP_MS = 30;
const RATE_WINDOW_MS = 10000;
const RATE_MIN_SPAN_MS = 2000; // the stream's own rate once it has seen this long
const LATENCY_KEEP = 2000;
const RECENT_KEEP = 5000; // frames a stream keeps for views that join it late
const LIVE_MAX_RATE = 50; // records a second whose events the tail gets; the tail shows 50 rows
const SKIPPED_WINDOW_MS = 60000; // how far back the "records not shown" note counts
// The tail's Type column; a value outside these (SINGLE_MESSAGE) reads "JSON".
const TYPE_LABELS = { CSV_BATCH: "CSV batch", TOMBSTONE: "Tombstone" };
const EVENTS = new Set([
  "message-received", "processing-started", "processing-completed", "processing-failed",
  "stats-updated", "consumer-status-changed", "records-skipped",
]);

window.__kdLatency ||= []; // [{event, seq, ms}] event timestamp -> handled in this page
// "topic/partition/offset" -> {logId, eventMs, arrivedMs, shownMs, via}: when a record's row first
// reached the DOM, the time of its message-received event and when that event reached this page
// (null for a row from a snapshot). Bounded; read by the latency measurement in the tests.
window.__kdShown ||= new Map();
window.__kdSnapshots ||= [];

function wsUrl(stream) {
  const url = new URL(stream.url);
  if (stream.sameHost) url.hostname = window.location.hostname;
  return url.toString();
}

class Stream {
  constructor(url, ticket) {
    this.url = url;
    this.ticket = ticket;
    this.views = new Set();
    this.ws = null;
    this.state = "connecting";
    this.delay = 500;
    this.timer = null;
    this.seq = null;
    this.openedAt = null;
    this.recent = []; // the newest frames, oldest first
    this.opens = 0; // connections opened: more than one means it was reconnected
    this.joins = 0; // connections on which a frame came after the gateway's hello (see onmessage)
    this.joinPending = false;
    this.drops = 0; // connections that closed while views still used them
  }

  add(view) {
    this.views.add(view);
    view.setMode(this.state, this.openedAt);
    if (!this.ws && !this.timer) this.connect();
    else this.catchUp(view);
  }

  catchUp(view) {
    // Everything this stream received after the view's snapshot (a live stream has no replay).
    if (view.seq === null || (this.seq !== null && view.seq >= this.seq)) return;
    if (!this.ws) {
      this.seq = null; // a retry is pending: it will start from the oldest snapshot among the views
      return;
    }
    for (const frame of this.recent) if (frame.seq > view.seq) view.onFrame(frame);
  }

  keep(frame) {
    if (typeof frame.seq !== "number" || (this.recent.length && frame.seq <= this.recent.at(-1).seq)) return;
    this.recent.push(frame);
    if (this.recent.length > RECENT_KEEP) this.recent.splice(0, RECENT_KEEP / 2);
  }

  remove(view) {
    this.views.delete(view);
    if (this.views.size === 0) this.close();
  }

  connect() {
    this.timer = null;
    const query = new URLSearchParams({ mode: "live", maxRate: String(LIVE_MAX_RATE) });
    const seqs = [...this.views].map((v) => v.seq).filter((s) => s !== null);
    const last = this.seq ?? (seqs.length ? Math.min(...seqs) : null);
    if (last !== null) query.set("lastSeq", String(last));
    this.recent = [];
    if (this.ticket) query.set("ticket", this.ticket);
    const text = query.toString();
    let ws;
    try {
      ws = new WebSocket(this.url + (text ? "?" + text : ""));
    } catch (err) {
      this.retry();
      return;
    }
    this.ws = ws;
    this.setState("connecting");
    ws.onopen = () => {
      this.delay = 500;
      this.openedAt = Date.now();
      this.opens += 1;
      this.joinPending = true;
      this.setState("open");
    };
    ws.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (err) {
        return;
      }
      if (frame.event === "resync-required") this.seq = null;
      if (typeof frame.seq === "number") this.seq = frame.seq;
      this.keep(frame);
      for (const view of this.views) view.onFrame(frame);
      if (this.joinPending && frame.event !== "connection-success") {
        // The gateway accepts the socket (onopen), says hello, and only then joins it to the live
        // feed: records between the views' snapshot and that join never come on this stream. A
        // frame after the hello proves the join happened, so a snapshot taken now covers them.
        this.joinPending = false;
        this.joins += 1;
        for (const view of this.views) view.joined(this.joins);
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.openedAt = null;
      this.drops += 1;
      this.setState("closed");
      this.retry();
    };
  }

  retry() {
    if (this.views.size === 0 || this.timer) return;
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 10000);
  }

  close() {
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    HUB.streams.delete(this.url);
  }

  setState(state) {
    this.state = state;
    for (const view of this.views) {
      view.setMode(state, this.openedAt);
      // For tests and the curious: a live stream is never cut off, so both stay at 0 through a burst.
      view.root.dataset.reconnects = String(Math.max(0, this.opens - 1));
      view.root.dataset.drops = String(this.drops);
    }
  }
}

function streamFor(config) {
  const url = wsUrl(config);
  let stream = HUB.streams.get(url);
  if (!stream) {
    stream = new Stream(url, config.ticket);
    HUB.streams.set(url, stream);
  }
  return stream;
}

const FORMAT = new Intl.NumberFormat();

function clock(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// How far a record has come: a snapshot never takes a row back to an earlier status.
const PROGRESS = { RECEIVED: 0, PROCESSING: 1, PROCESSED: 2, FAILED: 2 };

// A record key as text (always via textContent): its UTF-8 text, or base64:… for a binary key.
function keyText(row) {
  if (row.key !== null && row.key !== undefined) return row.key;
  return row.keyBase64 ? `base64:${row.keyBase64}` : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

class LiveView {
  constructor(root, part) {
    this.root = root;
    this.part = part;
    this.seq = null;
    this.stats = {};
    this.rows = new Map(); // logId -> row, oldest first
    this.tailSize = 50;
    this.serverRate = 0;
    this.serverSkipped = 0; // records Python's feed left out over the last minute
    this.counted = []; // {at: the counts' time, arrived, total: processed + failed}: the rate
    this.skips = []; // [arrival ms, records] of each records-skipped
    this.skippedTotal = 0;
    this.stream = null;
    this.mode = "server";
    this.openedAt = null;
    this.lastRender = 0;
    this.renderTimer = null;
    this.trs = new Map(); // logId -> its <tr>, for the tail
    this.lastLatency = null;
    this.via = "snapshot";
    this.reported = undefined; // the "streaming" state last sent to Python
    this.setStateValue = null;
    this.values = {};
    for (const el of root.querySelectorAll("[data-k]")) this.values[el.dataset.k] = el;
    this.tbody = root.querySelector("tbody");
    // Streamlit may remount the component into the same element: rows of the previous view are not ours.
    if (this.tbody) this.tbody.replaceChildren();
    this.empty = root.querySelector(".kd-empty");
    this.modeText = root.querySelector(".kd-mode");
    this.latencyText = root.querySelector(".kd-latency");
    this.skippedText = root.querySelector(".kd-skipped");
    this.tick = setInterval(() => this.renderRate(), 1000);
  }

  applySnapshot(data) {
    if (!data) return;
    // For failure messages in the tests: which snapshots came, and what this view had then.
    window.__kdSnapshots.push({ part: this.part, seq: data.seq, had: this.seq, rows: (data.rows || []).length, at: Date.now() });
    if (window.__kdSnapshots.length > 40) window.__kdSnapshots.shift();
    this.tailSize = data.tailSize || this.tailSize;
    this.serverRate = data.rate || 0;
    this.serverSkipped = data.skipped || 0;
    if (this.seq === null || data.seq > this.seq) {
      this.seq = data.seq;
      this.via = "snapshot";
      this.stats = { ...(data.stats || {}) };
      this.count(this.stats);
      this.rows = new Map();
      for (const row of [...(data.rows || [])].reverse()) this.rows.set(row.logId, { ...row });
      this.schedule();
    } else {
      this.fillIn(data);
    }
    if (data.stream) {
      const stream = this.stream || streamFor(data.stream);
      if (data.stream.ticket) stream.ticket = data.stream.ticket; // the newest, for the next (re)connect
      if (!this.stream) {
        this.stream = stream;
        stream.add(this);
      }
    } else {
      this.setMode("server", null);
    }
    this.renderRate();
  }

  fillIn(data) {
    // A snapshot older than what the stream brought since. A live stream starts where it connected
    // and leaves records out when busy, so the snapshot may have rows the stream did not bring: they
    // are added, in the order of their seq (rows read from the store have none: they are the oldest).
    // A snapshot never removes a row, nor takes one back to an earlier status.
    const rows = new Map(this.rows);
    for (const row of data.rows || []) {
      const mine = rows.get(row.logId);
      if (!mine) rows.set(row.logId, { ...row });
      else if ((PROGRESS[row.status] ?? 0) > (PROGRESS[mine.status] ?? 0)) {
        Object.assign(mine, { status: row.status, consumerId: row.consumerId, error: row.error });
      }
    }
    const ordered = [...rows.values()].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
    this.rows = new Map(ordered.slice(-this.tailSize * 2).map((row) => [row.logId, row]));
    this.schedule();
  }

  onFrame(frame) {
    const { event, data, seq } = frame;
    if (!EVENTS.has(event) || typeof seq !== "number" || !data) return;
    if (this.seq !== null && seq <= this.seq) return;
    this.seq = seq;
    this.via = "stream";
    this.apply(event, data, seq);
    if (data.timestamp) {
      const ms = Date.now() - Date.parse(data.timestamp);
      this.lastLatency = ms;
      if (this.part === "counters") {
        window.__kdLatency.push({ event, seq, ms });
        if (window.__kdLatency.length > LATENCY_KEEP) window.__kdLatency.splice(0, LATENCY_KEEP / 2);
      }
    }
    this.schedule();
  }

  apply(event, d, seq) {
    // The counts come from stats-updated alone: with a sampled stream, counting events would not add up.
    if (event === "message-received") {
      if (!this.rows.has(d.logId)) {
        this.rows.set(d.logId, {
          logId: d.logId, topic: d.topic, partition: d.partition, offset: d.offset,
          key: d.key, keyBase64: d.keyBase64, dataType: d.dataType, rowCount: d.rowCount, status: "RECEIVED",
          consumerId: null, error: null, time: Date.parse(d.timestamp), seq, arrived: Date.now(),
        });
        while (this.rows.size > this.tailSize * 2) this.rows.delete(this.rows.keys().next().value);
      }
    } else if (event === "processing-started" || event === "processing-completed" || event === "processing-failed") {
      const row = this.rows.get(d.logId);
      if (row && row.status !== "PROCESSED" && row.status !== "FAILED") {
        row.status = d.status || row.status;
        row.consumerId = d.consumerId || row.consumerId;
        row.error = d.error || null;
      }
    } else if (event === "stats-updated") {
      this.stats = { ...d };
      this.count(d);
    } else if (event === "records-skipped") {
      const records = Number(d.count) || 0;
      this.skips.push([Date.now(), records]);
      this.skippedTotal += records;
      this.root.dataset.skipped = String(this.skippedTotal);
    }
  }

  count(stats) {
    // One point of the outcome counter over time, at the backend's time of the counts (their
    // `timestamp`; the arrival time when there is none). The rate is the counter's slope over the
    // last 10 s of that time: with arrival times, counts delivered later than before (0.2 then 1.2 s
    // on a busy machine) shrank the window's counts to 9 s of processing, and 1,000/s read 900 for
    // 10 s (tests/test_live_panel_rate.py).
    const total = (Number(stats.processedMessages) || 0) + (Number(stats.failedMessages) || 0);
    const arrived = Date.now();
    const at = Date.parse(stats.timestamp) || arrived;
    const last = this.counted.at(-1);
    if (last && total < last.total) this.counted = []; // counts started over (another backend)
    else if (last && at < last.at) return; // older than what we have (a snapshot behind the stream)
    this.counted.push({ at, arrived, total });
    while (this.counted.length > 2 && this.counted[1].at <= at - RATE_WINDOW_MS) this.counted.shift();
  }

  joined(joins) {
    // Ask Python for the tail's snapshot after each join (its fragment reruns on the state change):
    // without it, a record received between the snapshot and the join was missing until it left
    // the tail (the next snapshot comes 15 s later and holds the newest 50 rows only).
    if (this.part !== "tail") return;
    window.__kdJoinedAt = Date.now(); // for the tests: the tail's next snapshot comes after this
    if (this.setStateValue) this.setStateValue("joined", joins);
  }

  setMode(state, openedAt) {
    this.mode = state === "open" ? "ws" : this.stream ? state : "server";
    this.openedAt = openedAt;
    this.root.dataset.mode = this.mode;
    // Tell Python whether this browser streams by itself; it then pushes snapshots less often.
    const streaming = this.mode === "ws";
    const settled = this.mode !== "connecting"; // report "open" or "not reachable", not attempts
    if (this.part === "counters" && settled && this.setStateValue && this.reported !== streaming) {
      this.reported = streaming;
      this.setStateValue("streaming", streaming);
    }
    if (!this.modeText) return;
    this.modeText.textContent =
      this.mode === "ws"
        ? "Live · streaming from the gateway"
        : this.mode === "connecting"
          ? "Live · connecting to the gateway…"
          : "Live · refreshed every second";
  }

  schedule() {
    if (this.renderTimer) return;
    const wait = Math.max(0, this.lastRender + MIN_RENDER_GAP_MS - Date.now());
    if (wait === 0) this.render();
    else this.renderTimer = setTimeout(() => this.render(), wait);
  }

  rate() {
    // The slope of the outcome counter over the last 10 s of the backend's time (or since the stream
    // opened, when that is shorter). stats-updated comes within 100 ms of any change, so the counts
    // held since the newest one arrived: the window ends that long after its time, and the rate
    // falls to 0 in the 10 s after a burst. In the stream's first seconds, Python's figure (the same
    // counts' change, also over their own times).
    const now = Date.now();
    const streaming = this.mode === "ws" && this.openedAt && now - this.openedAt >= RATE_MIN_SPAN_MS;
    if (!streaming || this.counted.length === 0) return this.serverRate;
    const last = this.counted.at(-1);
    const end = last.at + Math.max(0, now - last.arrived);
    const from = Math.max(end - RATE_WINDOW_MS, this.counted[0].at);
    let atFrom = this.counted[0].total;
    for (const { at, total } of this.counted) if (at <= from) atFrom = total;
    return ((last.total - atFrom) * 1000) / Math.max(end - from, 1000);
  }

  skipped() {
    // Records left out of the tail over the last minute: the stream's own count while it streams.
    const now = Date.now();
    while (this.skips.length && this.skips[0][0] < now - SKIPPED_WINDOW_MS) this.skips.shift();
    if (this.mode !== "ws") return this.serverSkipped;
    return this.skips.reduce((sum, [, records]) => sum + records, 0);
  }

  renderRate() {
    // Once a second (and after snapshots): the rate and how late the last event was on screen.
    if (this.part === "counters" && this.latencyText) {
      const text =
        this.lastLatency === null ? "" : `last event on screen ${Math.max(0, this.lastLatency)} ms after it happened`;
      if (this.latencyText.textContent !== text) this.latencyText.textContent = text;
    }
    if (this.part === "tail") this.renderSkipped();
    this.renderRateValue();
  }

  renderRateValue() {
    // With every counters render too, not only once a second: as a burst starts or stops the rate
    // moves by thousands a second, and a figure a second old was off by tens of percent.
    const el = this.part === "counters" ? this.values.rate : null;
    if (!el) return;
    const r = this.rate();
    const text = r >= 10 ? FORMAT.format(Math.round(r)) : r.toFixed(1);
    if (el.textContent !== text) el.textContent = text;
  }

  renderSkipped() {
    if (!this.skippedText) return;
    const records = this.skipped();
    const text = records
      ? `${FORMAT.format(records)} records not shown in the last minute: records arrive faster than the ` +
        `tail can show (${LIVE_MAX_RATE} a second), so it shows the newest. The counters above count every record.`
      : "";
    if (this.skippedText.textContent !== text) this.skippedText.textContent = text;
    this.skippedText.hidden = !records;
  }

  render() {
    this.renderTimer = null;
    this.lastRender = Date.now();
    for (const [k, el] of Object.entries(this.part === "counters" ? this.values : {})) {
      if (k === "rate") continue;
      const v = this.stats[k];
      const text = v === undefined || v === null ? "–" : FORMAT.format(v);
      if (el.textContent !== text) el.textContent = text;
    }
    this.renderRateValue();
    if (this.part === "tail") {
      this.renderTail();
      this.renderSkipped();
    }
  }

  renderTail() {
    // Keyed rows: a new record inserts one row, a status change edits one cell; nothing is rebuilt.
    const rows = [...this.rows.values()].slice(-this.tailSize).reverse();
    const wanted = new Set(rows.map((row) => row.logId));
    for (const [logId, tr] of this.trs) {
      if (!wanted.has(logId)) {
        tr.remove();
        this.trs.delete(logId);
      }
    }
    const shownAt = Date.now();
    // Highlight arrivals while they are few enough to follow (under 2 a second); beyond that the
    // animations would only keep the browser repainting.
    const arriving = rows.filter((row) => !this.trs.has(row.logId)).length;
    this.arrivals = (this.arrivals || []).filter((t) => t > shownAt - 2000);
    for (let i = 0; i < arriving; i++) this.arrivals.push(shownAt);
    const flash = this.trs.size > 0 && this.arrivals.length < 4;
    let previous = null;
    for (const row of rows) {
      let tr = this.trs.get(row.logId);
      if (!tr) {
        tr = this.makeRow(row, flash);
        this.trs.set(row.logId, tr);
        const where = `${row.topic}/${row.partition}/${row.offset}`;
        if (!window.__kdShown.has(where)) {
          const seen = { logId: row.logId, eventMs: row.time, arrivedMs: row.arrived ?? null, shownMs: shownAt };
          window.__kdShown.set(where, { ...seen, via: this.via });
        }
      } else {
        this.updateRow(tr, row);
      }
      const next = previous ? previous.nextSibling : this.tbody.firstChild;
      if (next !== tr) this.tbody.insertBefore(tr, next);
      previous = tr;
    }
    if (window.__kdShown.size > 5000) {
      window.__kdShown = new Map([...window.__kdShown.entries()].slice(-2500));
    }
    if (this.empty) this.empty.hidden = rows.length > 0;
  }

  makeRow(row, fresh) {
    const tr = document.createElement("tr");
    tr.dataset.logId = row.logId;
    if (fresh) tr.className = "kd-new";
    cell(tr, clock(row.time), "kd-time");
    cell(tr, row.topic, "kd-topic");
    cell(tr, row.partition, "kd-num");
    cell(tr, row.offset, "kd-num kd-offset");
    const key = cell(tr, keyText(row), "kd-key");
    key.title = key.textContent;
    cell(tr, TYPE_LABELS[row.dataType] || "JSON", "kd-type");
    cell(tr, row.rowCount, "kd-num");
    const status = cell(tr, "", "kd-status-cell");
    tr._pill = document.createElement("span");
    status.appendChild(tr._pill);
    tr._consumer = cell(tr, "", "kd-consumer");
    tr._error = cell(tr, "", "kd-error");
    tr._shown = {};
    this.updateRow(tr, row);
    return tr;
  }

  updateRow(tr, row) {
    const shown = tr._shown;
    if (shown.status !== row.status) {
      tr._pill.className = `kd-pill kd-s-${String(row.status || "").toLowerCase()}`;
      tr._pill.textContent = row.status;
      shown.status = row.status;
    }
    if (shown.consumer !== row.consumerId) {
      tr._consumer.textContent = row.consumerId || "";
      shown.consumer = row.consumerId;
    }
    if (shown.error !== row.error) {
      tr._error.textContent = row.error || "";
      tr._error.title = row.error || "";
      shown.error = row.error;
    }
  }

  dispose() {
    clearInterval(this.tick);
    clearTimeout(this.renderTimer);
    if (this.stream) this.stream.remove(this);
    this.stream = null;
  }
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const part = (data && data.part) || "counters";
  const root = parentElement.querySelector(".kd-root");
  root.dataset.part = part;
  let view = parentElement.__kdView;
  if (!view || view.part !== part) {
    if (view) view.dispose();
    view = new LiveView(root, part);
    parentElement.__kdView = view;
  }
  view.setStateValue = setStateValue;
  view.applySnapshot(data);
  return () => {
    view.dispose();
    if (parentElement.__kdView === view) parentElement.__kdView = null;
  };
}
