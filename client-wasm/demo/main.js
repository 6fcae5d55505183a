// The demo page served at `/`: a collaborative editor on the Lattice browser client.
//
// - the text: CodeMirror 6 on a `Y.Text`, kept in step with the Lattice document by the Yjs
//   bridge (`lattice-client/yjs`), the way an application reuses an existing Yjs editor binding;
// - the title: a last-writer-wins register; the applause: a grow-only counter;
// - presence: names, colours, "is typing…" and each peer's caret and selection in the editor
//   (a Yjs awareness carried as Lattice presence by the bridge); the connection status, the
//   number of local edits not yet confirmed, and a switch to work offline (kept across reloads
//   of this tab).
import init, { LatticeClient } from "lattice-client";
import { bindYDoc } from "lattice-client/yjs";
import * as Y from "yjs";
import { Awareness } from "y-protocols/awareness";
import { EditorView, basicSetup } from "codemirror";
import { EditorState } from "@codemirror/state";
import { yCollab } from "y-codemirror.next";

const params = new URLSearchParams(location.search);
const docId = params.get("doc") || "demo";
const token = params.get("token") || "";
const $ = (id) => document.getElementById(id);

const NAMES = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Donald", "Radia", "Ken", "Margaret", "Leslie", "Hedy"];
const COLOURS = ["#5b5bd6", "#e5484d", "#12a594", "#f76b15", "#d6409f", "#0090ff", "#8e4ec6", "#46a758"];

// Each tab has a name of its own (sessionStorage is per tab); one picked for this tab, not
// typed, gives way when another peer already uses it.
const NAME_KEY = "lattice-demo-name";
function freeName(taken) {
  const free = NAMES.filter((n) => !taken.has(n));
  const pool = free.length > 0 ? free : NAMES;
  return pool[Math.floor(Math.random() * pool.length)];
}

function colourOf(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return COLOURS[h % COLOURS.length];
}

let toastTimer;
function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 5000);
}

async function main() {
  await init({ module_or_path: new URL("./lattice_client_bg.wasm", import.meta.url) });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // A short backoff cap: a person watching the status should not wait half a minute.
  const client = new LatticeClient({ url: `${scheme}//${location.host}/v1/sync`, token, backoffMaxMs: 5000 });
  $("doc-id").textContent = docId;
  $("replica").textContent = client.replicaId.toString(16).padStart(8, "0");

  client.onStatus(({ status, pending, saved, transport }) => {
    $("status").textContent = status;
    $("status").dataset.status = status;
    $("transport").textContent = transport;
    $("transport").dataset.transport = transport;
    // "all saved": the server has committed everything this tab holds of the document.
    $("pending").textContent = pending === 0 && saved ? "all saved" : `${pending} pending`;
    $("pending").classList.toggle("has", pending > 0);
  });
  client.onError((e) => {
    console.warn("lattice:", e.code, e.message);
    toast(e.code === "unauthorized" || e.code === "forbidden"
      ? `Access refused (${e.code}): open the demo URL printed by \`lattice serve\`.`
      : e.message);
  });

  const offline = $("offline-switch");
  offline.checked = sessionStorage.getItem("lattice-demo-offline") === "1";
  offline.addEventListener("change", () => {
    sessionStorage.setItem("lattice-demo-offline", offline.checked ? "1" : "0");
    if (offline.checked) client.disconnect(); else client.connect();
  });
  if (!offline.checked) client.connect();

  const doc = await client.open(docId);
  const title = doc.register("title");
  const applause = doc.counter("applause");

  // The text, through the Yjs bridge and the stock CodeMirror binding; the awareness (carets and
  // selections) travels as this client's presence.
  const ydoc = new Y.Doc();
  const awareness = new Awareness(ydoc);
  const binding = bindYDoc(doc, ydoc, { awareness, onError: (e) => toast(String(e)) });
  const ytext = ydoc.getText("body");
  const undoManager = new Y.UndoManager(ytext);
  let lastTyping = 0;
  const view = new EditorView({
    parent: $("editor"),
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        basicSetup,
        EditorView.lineWrapping,
        yCollab(ytext, awareness, { undoManager }),
        EditorView.updateListener.of((update) => {
          const typed = update.transactions.some((t) => t.isUserEvent("input") || t.isUserEvent("delete"));
          if (typed && Date.now() - lastTyping > 1500) {
            lastTyping = Date.now();
            doc.setTyping(true);
          }
        }),
      ],
    }),
  });

  // Title and applause follow the document; the title field is not overwritten while focused.
  const titleInput = $("title");
  const showTitle = () => {
    const value = title.get();
    const text = typeof value === "string" ? value : "";
    if (document.activeElement !== titleInput) titleInput.value = text;
    document.title = `${text || "Untitled"} · Lattice`;
  };
  const showApplause = () => ($("counter-value").textContent = String(applause.value));
  titleInput.addEventListener("input", () => title.set(titleInput.value));
  titleInput.addEventListener("blur", showTitle);
  titleInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault(); // the Enter that moves to the editor must not also type in it
      view.focus();
    }
  });
  $("counter-button").addEventListener("click", () => applause.increment());
  client.onChange((changed) => {
    if (changed !== docId) return;
    showTitle();
    showApplause();
  });
  showTitle();
  showApplause();

  // Presence: the awareness' local state is this client's presence. `name` and `colour` are the
  // people list's; `user` is what y-codemirror.next (and stock Yjs editors) label carets with.
  const peerName = (p) => {
    const s = p.state ?? {};
    if (typeof s.name === "string") return s.name;
    return s.user && typeof s.user.name === "string" ? s.user.name : null;
  };
  const nameInput = $("my-name");
  let namePicked = sessionStorage.getItem(NAME_KEY) !== null;
  nameInput.value = sessionStorage.getItem(NAME_KEY)
    ?? freeName(new Set(doc.presence().map(peerName)));
  const publish = () => {
    const name = nameInput.value.trim() || "Anonymous";
    const colour = colourOf(name);
    awareness.setLocalStateField("name", name);
    awareness.setLocalStateField("colour", colour);
    awareness.setLocalStateField("user", { name, color: colour, colorLight: `${colour}33` });
    renderPeople(doc.presence());
  };
  nameInput.addEventListener("change", () => {
    namePicked = true;
    sessionStorage.setItem(NAME_KEY, nameInput.value.trim());
    publish();
  });
  const renderPeople = (peers) => {
    const list = $("presence");
    list.replaceChildren();
    const me = nameInput.value.trim() || "Anonymous";
    const rows = [{ name: `${me} (you)`, colour: colourOf(me), typing: false, me: true }];
    for (const p of peers) {
      const name = peerName(p) ?? `peer ${p.peer}`;
      const user = p.state && p.state.user;
      const colour = p.state && typeof p.state.colour === "string" ? p.state.colour
        : user && typeof user.color === "string" ? user.color : "#98a2b3";
      rows.push({ name, colour, typing: p.typing, me: false });
    }
    for (const row of rows) {
      const li = document.createElement("li");
      li.dataset.testid = row.me ? "presence-me" : "presence-peer";
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.background = row.colour;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = row.name;
      li.append(dot, name);
      if (row.typing) {
        const typing = document.createElement("span");
        typing.className = "typing";
        typing.dataset.testid = "typing";
        typing.textContent = "is typing…";
        li.append(typing);
      }
      list.append(li);
    }
  };
  client.onPresence((changed, peers) => {
    if (changed !== docId) return;
    // The first peers arrive after the page picked a name: give way if one of them has it.
    const taken = new Set(peers.map(peerName));
    if (!namePicked && taken.has(nameInput.value.trim())) {
      nameInput.value = freeName(taken);
      publish();
    }
    renderPeople(peers);
  });
  publish();

  // For the browser tests and for poking around in the console.
  window.latticeDemo = { client, doc, ydoc, awareness, view };
  document.body.dataset.ready = "true";
}

main().catch((e) => {
  console.error(e);
  toast(`The demo could not start: ${e && e.message ? e.message : e}`);
});
