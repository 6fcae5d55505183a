// The Tiptap page served at `/tiptap`: a rich-text editor (Tiptap 3 with its collaboration and
// collaboration-caret extensions) on the stock `@hocuspocus/provider`, against Lattice's
// `/hocuspocus` endpoint (docs/hocuspocus.md). Nothing here knows it is not talking to
// Hocuspocus: this is what a Tiptap application does, with the URL changed.
import { Editor } from "@tiptap/core";
import StarterKit from "@tiptap/starter-kit";
import Collaboration from "@tiptap/extension-collaboration";
import CollaborationCaret from "@tiptap/extension-collaboration-caret";
import { HocuspocusProvider } from "@hocuspocus/provider";
import * as Y from "yjs";

const params = new URLSearchParams(location.search);
const docId = params.get("doc") || "tiptap";
const token = params.get("token") || "";
const $ = (id) => document.getElementById(id);

const NAMES = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Donald", "Radia", "Ken", "Margaret", "Leslie", "Hedy"];
const COLOURS = ["#5b5bd6", "#e5484d", "#12a594", "#f76b15", "#d6409f", "#0090ff", "#8e4ec6", "#46a758"];
const NAME_KEY = "lattice-tiptap-name";
const colourOf = (name) => {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return COLOURS[h % COLOURS.length];
};
const freeName = (taken) => {
  const free = NAMES.filter((n) => !taken.has(n));
  const pool = free.length > 0 ? free : NAMES;
  return pool[Math.floor(Math.random() * pool.length)];
};

let toastTimer;
function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 5000);
}

const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const ydoc = new Y.Doc();
const provider = new HocuspocusProvider({
  url: `${scheme}//${location.host}/hocuspocus`,
  name: docId,
  document: ydoc,
  token,
  onAuthenticationFailed: ({ reason }) => toast(`Access refused (${reason}): open the Tiptap link with a token that may edit "${docId}".`),
});
$("doc-id").textContent = docId;

// The socket's status comes with its events; synced is the provider's own (its first sync step 2).
let socket = "connecting";
provider.on("status", ({ status }) => { socket = status; });
const showStatus = () => {
  const status = socket !== "connected" ? (socket === "connecting" ? "connecting" : "offline")
    : provider.synced ? "synced" : "online";
  $("status").textContent = status;
  $("status").dataset.status = status;
  const unsaved = provider.unsyncedChanges;
  $("pending").textContent = `${unsaved} unsaved`;
  $("pending").classList.toggle("has", unsaved > 0);
};
for (const event of ["status", "synced", "unsyncedChanges"]) provider.on(event, showStatus);

const nameInput = $("my-name");
let namePicked = sessionStorage.getItem(NAME_KEY) !== null;
nameInput.value = sessionStorage.getItem(NAME_KEY) ?? freeName(new Set());
const user = () => {
  const name = nameInput.value.trim() || "Anonymous";
  return { name, color: colourOf(name) };
};

const editor = new Editor({
  element: $("editor"),
  extensions: [
    // The collaboration extension brings its own undo (Yjs'): the starter kit's is left out.
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: ydoc }),
    CollaborationCaret.configure({ provider, user: user() }),
  ],
});

const renderPeople = () => {
  const list = $("presence");
  list.replaceChildren();
  const rows = [];
  for (const [id, state] of provider.awareness.getStates()) {
    const u = state && state.user;
    if (!u || typeof u.name !== "string") continue;
    rows.push({ name: id === provider.awareness.clientID ? `${u.name} (you)` : u.name, colour: u.color, me: id === provider.awareness.clientID });
  }
  rows.sort((a, b) => Number(b.me) - Number(a.me));
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
    list.append(li);
  }
};
provider.awareness.on("change", () => {
  // A name picked for this tab, not typed, gives way when another peer already uses it.
  const taken = new Set();
  for (const [id, state] of provider.awareness.getStates()) {
    if (id !== provider.awareness.clientID && state && state.user) taken.add(state.user.name);
  }
  if (!namePicked && taken.has(nameInput.value.trim())) {
    nameInput.value = freeName(taken);
    editor.commands.updateUser(user());
  }
  renderPeople();
});
nameInput.addEventListener("change", () => {
  namePicked = true;
  sessionStorage.setItem(NAME_KEY, nameInput.value.trim());
  editor.commands.updateUser(user());
  renderPeople();
});

const buttons = [...$("toolbar").querySelectorAll("button")];
const run = (button) => {
  const chain = editor.chain().focus();
  if (button.dataset.mark === "bold") chain.toggleBold().run();
  else if (button.dataset.mark === "italic") chain.toggleItalic().run();
  else if (button.dataset.block === "heading") chain.toggleHeading({ level: 2 }).run();
  else if (button.dataset.block === "bulletList") chain.toggleBulletList().run();
};
for (const b of buttons) {
  // The editor keeps focus while a button is pressed. Otherwise the button takes it on
  // mousedown and Tiptap's focus() gives it back only on the next animation frame, so keys
  // typed in between (the space after pressing Bold) would be lost.
  b.addEventListener("mousedown", (event) => event.preventDefault());
  b.addEventListener("click", () => run(b));
}
editor.on("transaction", () => {
  for (const b of buttons) {
    const on = b.dataset.mark ? editor.isActive(b.dataset.mark) : b.dataset.block === "heading" ? editor.isActive("heading", { level: 2 }) : editor.isActive(b.dataset.block);
    b.classList.toggle("on", on);
  }
});

showStatus();
renderPeople();
// For the browser tests and for poking around in the console.
window.latticeTiptap = { editor, provider, ydoc };
document.body.dataset.ready = "true";
