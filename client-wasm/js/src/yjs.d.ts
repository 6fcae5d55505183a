import type * as Y from "yjs";
import type { LatticeDocument } from "./lattice_client.js";

/** A live binding between a `Y.Doc` and a Lattice document. */
export interface YjsBinding {
  /** The bound Yjs document: give it (or its texts) to editor bindings. */
  readonly ydoc: Y.Doc;
  /** The awareness given in the options, now carried as presence; `null` without one. */
  readonly awareness: AwarenessLike | null;
  /** Stops carrying changes; both documents keep their content. */
  destroy(): void;
}

/** What the binding uses of a `y-protocols/awareness` `Awareness`. */
export interface AwarenessLike {
  readonly clientID: number;
  readonly states: Map<number, Record<string, unknown>>;
  readonly meta: Map<number, { clock: number; lastUpdated: number }>;
  getLocalState(): Record<string, unknown> | null;
  on(event: "change", handler: (changes: AwarenessChanges, origin: unknown) => void): void;
  off(event: "change", handler: (changes: AwarenessChanges, origin: unknown) => void): void;
  emit(event: "change" | "update", args: [AwarenessChanges, unknown]): void;
}

export interface AwarenessChanges {
  added: number[];
  updated: number[];
  removed: number[];
}

export interface YjsBindingOptions {
  /** Called when the Lattice document refuses an update made through the `Y.Doc`. */
  onError?: (error: unknown) => void;
  /**
   * An `Awareness` (npm `y-protocols/awareness`) on the same `Y.Doc`, carried as the
   * document's presence: its local state is published (JSON) at most every 80 ms, and the
   * other peers' presence appears as remote states, so editor bindings show their cursors.
   */
  awareness?: AwarenessLike;
}

/** The shortest time, in milliseconds, between two publications of the local awareness state. */
export const AWARENESS_PUBLISH_MS: number;

/**
 * Keeps `ydoc` (a new `Y.Doc` when omitted) and `doc` in step, both ways. Texts map one to one:
 * `ydoc.getText(name)` is `doc.text(name)`.
 */
export function bindYDoc(
  doc: LatticeDocument,
  ydoc?: Y.Doc,
  options?: YjsBindingOptions,
): YjsBinding;
