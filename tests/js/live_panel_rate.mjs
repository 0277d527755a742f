// The live panel's MESSAGES / S from stats-updated frames whose delivery is late and bunched.
// Usage: node live_panel_rate.mjs <path of dashboard/static/live_panel.js>
// Prints one JSON line: the rates the panel shows at a few moments, and the true ones.
import { pathToFileURL } from "node:url";

let clock = 1_000_000; // the browser's Date.now()
Date.now = () => clock;
globalThis.window = globalThis;
globalThis.setInterval = () => 0;
globalThis.clearInterval = () => {};
globalThis.setTimeout = () => 0;
globalThis.clearTimeout = () => {};

const root = { dataset: {}, querySelectorAll: () => [], querySelector: () => null };
const parent = { querySelector: () => root };
const mount = (await import(pathToFileURL(process.argv[2]).href)).default;
mount({ data: { part: "counters", seq: 0, stats: {} }, parentElement: parent, setStateValue: null });
const view = parent.__kdView;
view.setMode("open", clock); // streaming from the gateway
view.render = () => {}; // no DOM here

// The backend processes 1,000 records a second, steadily; it says so 10 times a second.
const RATE = 1000;
const backendStart = Date.parse("2026-12-04T12:00:00.000Z");
const stats = (ms) => ({
  processedMessages: Math.round((ms / 1000) * RATE), failedMessages: 0,
  timestamp: new Date(backendStart + ms).toISOString(),
});
// Each stats-updated reaches the page `lag` ms after its time: 200 ms for 12 s, then (a busy
// machine) nothing for a while and 1.2 s late, as the frames of 1.2 s come at once.
const lagAt = (ms) => (ms < 12_000 ? 200 : 1200);
const shown = [];
let seq = 1;
for (let ms = 0; ms <= 16_000; ms += 100) {
  clock = 1_000_000 + ms + lagAt(ms);
  view.onFrame({ event: "stats-updated", data: stats(ms), seq: seq++ });
  if (ms % 1000 === 0 && ms >= 11_000) shown.push({ atBackendMs: ms, shown: Math.round(view.rate()) });
}
// After the last frame, nothing more: the counts held (the burst is over). 20 s later: 0.
clock += 20_000;
const after = view.rate();
console.log(JSON.stringify({ truth: RATE, shown, afterQuiet: after }));
