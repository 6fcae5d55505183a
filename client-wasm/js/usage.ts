// Type check of the generated TypeScript declarations (`cargo xtask build-web` runs
// `tsc --noEmit` on this file). It is compiled, never run: it shows how an application uses the
// package, and `@ts-expect-error` lines prove that wrong uses are refused.
import init, {
  LatticeClient,
  type LatticeDocument,
  type LatticeError,
  type LatticeOrigin,
  type LatticePeer,
  type LatticeStatus,
  type LatticeStatusEvent,
  type LatticeTransport,
  type LatticeValue,
} from "../../target/web/pkg/lattice_client.js";
import { bindYDoc, type YjsBinding } from "../../target/web/pkg/yjs.js";
import { Awareness } from "y-protocols/awareness";
import * as Y from "yjs";

export async function example(): Promise<void> {
  await init();
  const client = new LatticeClient({
    url: "wss://example.invalid/v1/sync",
    token: "secret",
    backoffMaxMs: 10_000,
    transport: "auto",
  });
  const sseOnly = new LatticeClient({ url: "wss://example.invalid/v1/sync", transport: "sse" });
  const inUse: LatticeTransport = sseOnly.transport;
  console.log(inUse);
  sseOnly.free();
  // @ts-expect-error: not a transport
  new LatticeClient({ url: "wss://example.invalid/v1/sync", transport: "carrier-pigeon" });
  const memoryOnly = new LatticeClient({ url: "ws://127.0.0.1:8080/v1/sync", dbName: null });
  memoryOnly.free();

  client.onStatus((event: LatticeStatusEvent) => {
    const status: LatticeStatus = event.status;
    const pending: number = event.pending;
    const saved: boolean = event.saved;
    const transport: LatticeTransport = event.transport;
    console.log(status, pending, saved, transport);
  });
  client.onChange((doc: string, origin: LatticeOrigin) => {
    if (origin === "remote") console.log("changed by someone else", doc);
  });
  client.onPresence((doc: string, peers: LatticePeer[]) => {
    for (const p of peers) console.log(doc, p.peer, p.state, p.typing);
  });
  client.onError((e: LatticeError) => console.warn(e.code, e.message, e.doc));
  client.connect();

  const doc: LatticeDocument = await client.open("team/notes");
  const body = doc.text("body");
  body.insert(0, "Hello");
  body.delete(0, 1);
  const text: string = body.toString();
  const length: number = body.length;
  doc.counter("likes").increment();
  doc.counter("likes").increment(5);
  const likes: number = doc.counter("likes").value;
  doc.register("title").set({ text: "Notes", tags: ["a", "b"], big: 2n ** 60n });
  const title: LatticeValue | undefined = doc.register("title").get();
  doc.setPresence({ name: "Ada", colour: "#f80" }, true);
  doc.setTyping(false);
  const others: LatticePeer[] = doc.presence();
  const pending: number = doc.pendingCount + client.pendingCount;
  const synced: boolean = doc.synced;
  const saved: boolean = doc.saved && client.saved;
  const replica: number = client.replicaId;
  const status: LatticeStatus = client.status;
  await client.whenPersisted();
  console.log(text, length, likes, title, others, pending, synced, saved, replica, status);
  // The Yjs bridge: an editor binding works on `binding.ydoc.getText("body")`.
  const binding: YjsBinding = bindYDoc(doc, new Y.Doc(), { onError: (e) => console.error(e) });
  const ytext: Y.Text = binding.ydoc.getText("body");
  ytext.insert(0, "typed in the editor");
  const sv: Uint8Array = doc.yjsStateVector();
  doc.applyYjsUpdate(Y.encodeStateAsUpdate(new Y.Doc(), sv));
  doc.onYjsUpdate(null);
  binding.destroy();
  bindYDoc(doc).destroy();
  // Awareness as presence: remote carets for editor bindings.
  const ydoc = new Y.Doc();
  const awareness = new Awareness(ydoc);
  const withCarets: YjsBinding = bindYDoc(doc, ydoc, { awareness });
  awareness.setLocalStateField("user", { name: "Ada", color: "#5b5bd6" });
  doc.onPresence((peers: LatticePeer[]) => console.log(peers.length));
  doc.onPresence(null);
  doc.setPresence({ name: "Ada" });
  withCarets.destroy();
  doc.close();
  client.disconnect();

  // @ts-expect-error the options need a URL
  new LatticeClient({ token: "x" });
  // @ts-expect-error statuses are a closed set
  const wrong: LatticeStatus = "busy";
  // @ts-expect-error functions are not values
  doc.register("r").set(() => 1);
  // @ts-expect-error change callbacks get a document id and an origin
  client.onChange((doc: number) => doc);
  // @ts-expect-error the bridge binds a Lattice document, not a client
  bindYDoc(client);
  console.log(wrong);
}
