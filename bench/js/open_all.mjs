// Opening many gateway clients, `batch` at a time, the two kinds interleaved so that both are
// spread over the ramp (shared by fanout.mjs and live.mjs).
//
// open(kind) opens one client of kind "sio" or "ws" and resolves to whether it connected.
// Resolves to how many failed.
export async function openInterleaved({ sio = 0, ws = 0, batch = 50 }, open) {
  const kinds = [];
  for (let i = 0; i < Math.max(sio, ws); i++) {
    if (i < sio) kinds.push("sio");
    if (i < ws) kinds.push("ws");
  }
  let failed = 0;
  for (let i = 0; i < kinds.length; i += batch) {
    failed += (await Promise.all(kinds.slice(i, i + batch).map(open))).filter((ok) => !ok).length;
  }
  return failed;
}
