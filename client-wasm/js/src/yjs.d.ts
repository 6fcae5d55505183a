import type * as Y from "yjs";
import type { LatticeDocument } from "./lattice_client.js";

/** A live binding between a `Y.Doc` and a Lattice document. */
export interface YjsBinding {
  /** The bound Yjs document: give it (or its texts) to editor bindings. */
  readonly ydoc: Y.Doc;
  /** Stops carrying changes; both documents keep their content. */
  destroy(): void;
}

export interface YjsBindingOptions {
  /** Called when the Lattice document refuses an update made through the `Y.Doc`. */
  onError?: (error: unknown) => void;
}

/**
 * Keeps `ydoc` (a new `Y.Doc` when omitted) and `doc` in step, both ways. Texts map one to one:
 * `ydoc.getText(name)` is `doc.text(name)`.
 */
export function bindYDoc(
  doc: LatticeDocument,
  ydoc?: Y.Doc,
  options?: YjsBindingOptions,
): YjsBinding;
