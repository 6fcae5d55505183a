// The Yjs bridge of `lattice-client` (imported as `lattice-client/yjs`): keeps a JavaScript
// `Y.Doc` (npm `yjs`) and a Lattice document in step, both ways, so that editor bindings written
// for Yjs (`y-codemirror.next`, `y-prosemirror`, …) work on top of the Lattice client.
//
// Edits made through the `Y.Doc` become local edits of the Lattice document: they are sent, kept
// in IndexedDB until the server acknowledges them, and counted in `pendingCount`. Changes that
// reach the Lattice document (from the server, from restored offline edits, or through its own
// `text()` API) are applied to the `Y.Doc` with the binding's origin, so they are not sent back.
// Texts map one to one: `ydoc.getText("body")` is `doc.text("body")`. Counters and registers
// have no Yjs counterpart and are used through the Lattice document.
//
// With `options.awareness` (a `y-protocols/awareness` `Awareness` on the same `Y.Doc`), the
// awareness is carried as Lattice presence: this client's local state becomes its presence
// (published at most every `AWARENESS_PUBLISH_MS`), and the other peers' presence (native
// clients, other browsers, stock Yjs clients on `/yjs`) becomes remote awareness states, added,
// updated and removed as the server reports them, so editor bindings show remote cursors and
// selections (`yCollab(ytext, awareness)` in `y-codemirror.next`).
import * as Y from "yjs";

/** The shortest time between two publications of the local awareness state as presence. */
export const AWARENESS_PUBLISH_MS = 80;
/** How often remote awareness states are marked fresh: the server's presence TTL, not the
 * awareness' own 30 s timeout, decides when a peer is gone. */
const AWARENESS_KEEPALIVE_MS = 10_000;
const AWARENESS_ORIGIN = "lattice";

function isEmptyUpdate(update) {
  return update.length === 2 && update[0] === 0 && update[1] === 0;
}

export function bindYDoc(doc, ydoc = new Y.Doc(), options = {}) {
  const onError = options.onError ?? ((error) => console.error("lattice-client/yjs:", error));
  // A unique origin marks the transactions the binding makes on the Y.Doc.
  const origin = { latticeBinding: doc.id };
  const toLattice = (update) => {
    try {
      doc.applyYjsUpdate(update);
    } catch (error) {
      // The Lattice document refused the update (too large, subdocuments…): the Y.Doc now holds
      // something the server will never see; report it rather than throw inside Yjs.
      onError(error);
    }
  };

  // Content the Y.Doc already holds (an editor that started before the binding) goes first…
  const ours = Y.encodeStateAsUpdate(ydoc, doc.yjsStateVector());
  if (!isEmptyUpdate(ours)) toLattice(ours);
  // …then what the Lattice document holds that the Y.Doc lacks.
  Y.applyUpdate(ydoc, doc.yjsUpdate(Y.encodeStateVector(ydoc)), origin);

  doc.onYjsUpdate((update) => Y.applyUpdate(ydoc, update, origin));
  const onUpdate = (update, from) => {
    if (from !== origin) toLattice(update);
  };
  ydoc.on("update", onUpdate);
  const awareness = options.awareness ?? null;
  const unbindAwareness = awareness ? bindAwareness(doc, awareness, onError) : () => {};
  let bound = true;
  return {
    ydoc,
    awareness,
    destroy() {
      if (!bound) return;
      bound = false;
      ydoc.off("update", onUpdate);
      doc.onYjsUpdate(null);
      unbindAwareness();
    },
  };
}

/** Carries `awareness` as the presence of `doc`, both ways; returns what undoes it. */
function bindAwareness(doc, awareness, onError) {
  // Remote peers by awareness id, with their state as JSON (to tell an update from a renewal).
  const remote = new Map();
  let timer = null;
  let lastPublished = 0;

  const publish = () => {
    timer = null;
    lastPublished = Date.now();
    const state = awareness.getLocalState();
    try {
      // Awareness states hold class instances (Yjs relative positions); presence holds JSON,
      // which is also what a stock Yjs client receives through the awareness protocol.
      doc.setPresence(state == null ? null : JSON.parse(JSON.stringify(state)));
    } catch (error) {
      onError(error);
    }
  };
  const onLocalChange = ({ added, updated, removed }, origin) => {
    if (origin === AWARENESS_ORIGIN || timer !== null) return;
    const me = awareness.clientID;
    if (!added.includes(me) && !updated.includes(me) && !removed.includes(me)) return;
    timer = setTimeout(publish, Math.max(0, AWARENESS_PUBLISH_MS - (Date.now() - lastPublished)));
  };

  const emit = (changes) => {
    if (changes.added.length + changes.updated.length + changes.removed.length === 0) return;
    awareness.emit("change", [changes, AWARENESS_ORIGIN]);
    awareness.emit("update", [changes, AWARENESS_ORIGIN]);
  };
  const onPeers = (peers) => {
    const now = Date.now();
    const changes = { added: [], updated: [], removed: [] };
    const present = new Set();
    for (const { peer, state } of peers) {
      if (state == null || typeof state !== "object" || peer === awareness.clientID) continue;
      present.add(peer);
      const json = JSON.stringify(state);
      const before = remote.get(peer);
      const clock = (awareness.meta.get(peer)?.clock ?? 0) + (before === json ? 0 : 1);
      awareness.meta.set(peer, { clock, lastUpdated: now });
      if (before === json) continue;
      (before === undefined ? changes.added : changes.updated).push(peer);
      remote.set(peer, json);
      awareness.states.set(peer, state);
    }
    for (const peer of [...remote.keys()]) {
      if (present.has(peer)) continue;
      changes.removed.push(peer);
      remote.delete(peer);
      awareness.states.delete(peer);
      awareness.meta.delete(peer);
    }
    emit(changes);
  };
  const keepalive = setInterval(() => {
    const now = Date.now();
    for (const peer of remote.keys()) {
      const meta = awareness.meta.get(peer);
      if (meta) meta.lastUpdated = now;
    }
  }, AWARENESS_KEEPALIVE_MS);

  awareness.on("change", onLocalChange);
  doc.onPresence(onPeers);
  onPeers(doc.presence());
  if (awareness.getLocalState() != null) publish();

  return () => {
    clearInterval(keepalive);
    clearTimeout(timer);
    awareness.off("change", onLocalChange);
    doc.onPresence(null);
    const removed = [...remote.keys()];
    for (const peer of removed) {
      awareness.states.delete(peer);
      awareness.meta.delete(peer);
    }
    remote.clear();
    emit({ added: [], updated: [], removed });
  };
}
