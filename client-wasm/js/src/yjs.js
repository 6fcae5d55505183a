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
import * as Y from "yjs";

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
  let bound = true;
  return {
    ydoc,
    destroy() {
      if (!bound) return;
      bound = false;
      ydoc.off("update", onUpdate);
      doc.onYjsUpdate(null);
    },
  };
}
