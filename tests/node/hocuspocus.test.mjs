// Stock `@hocuspocus/provider` (4.7.0, as Tiptap's collaboration extension uses it) on
// `/hocuspocus`, with stock y-websocket clients and native Lattice clients on the same documents
// of a real Lattice server: several documents on one socket, tokens per document, read-only
// documents, sync status only after commit (kill -9 right after it), stateless messages, and
// malformed frames that close only their own connection.
import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import {
  BACKENDS, LatticeServer, NativeEditor, RUN, converged, sleep, synced, waitFor, yjsClient, typeInto, nativeType
} from './support.mjs'

/** One `HocuspocusProviderWebsocket` on the server's `/hocuspocus`. */
function hocusSocket (server) {
  return new HocuspocusProviderWebsocket({
    url: `ws://${server.addr}/hocuspocus`,
    WebSocketPolyfill: WebSocket,
    delay: 100,
    minDelay: 100,
    maxDelay: 300
  })
}

/**
 * A `HocuspocusProvider` for `name` on `socket` with `token`, recording what the server
 * answered (its scope, denials, stateless messages).
 */
function hocusDoc (socket, name, token) {
  const ydoc = new Y.Doc()
  const seen = { scopes: [], denied: [], stateless: [] }
  const provider = new HocuspocusProvider({
    websocketProvider: socket,
    name,
    document: ydoc,
    token,
    onAuthenticated: ({ scope }) => seen.scopes.push(scope),
    onAuthenticationFailed: ({ reason }) => seen.denied.push(reason),
    onStateless: ({ payload }) => seen.stateless.push(payload)
  })
  // A provider on a shared socket attaches itself only when asked.
  provider.attach()
  const text = ydoc.getText('text')
  return {
    ydoc,
    provider,
    text,
    seen,
    get content () { return text.toString() },
    destroy () { provider.destroy(); ydoc.destroy() }
  }
}

async function hocusSynced (client, ms = 20000) {
  await waitFor(() => client.provider.isSynced && client.provider.unsyncedChanges === 0,
    `the Hocuspocus provider of ${client.provider.configuration.name} to sync`, ms,
    () => JSON.stringify({ synced: client.provider.isSynced, unsynced: client.provider.unsyncedChanges, ...client.seen }))
}

/** A raw WebSocket on `/hocuspocus` that records every frame and the close. */
async function rawHocus (server) {
  const ws = new WebSocket(`ws://${server.addr}/hocuspocus`)
  ws.binaryType = 'nodebuffer'
  const frames = []
  const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)))
  ws.on('message', (data) => frames.push(new Uint8Array(data)))
  await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject) })
  return { ws, frames, closed }
}

/** A frame for `name`: the document name, the message type, then what `body` writes. */
function frame (name, type, body = () => {}) {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, name)
  encoding.writeVarUint(e, type)
  body(e)
  return encoding.toUint8Array(e)
}

/** The auth message as the provider writes it: sub-type 0, the token, its version. */
const authFrame = (name, token) => frame(name, 2, (e) => {
  encoding.writeVarUint(e, 0)
  encoding.writeVarString(e, token)
  encoding.writeVarString(e, '4.7.0')
})

for (const backend of BACKENDS) {
  describe(`on ${backend}`, () => {
    let server
    before(async () => {
      server = await new LatticeServer(['--ping-interval-secs', '1'], backend).start()
    })
    after(async () => { await server.dispose() })

    test('providers sharing one socket, each on two documents, converge with y-websocket and native clients', async () => {
      const docs = [`${RUN}/${backend}/hp/one`, `${RUN}/${backend}/hp/two`]
      const token = server.token({ doc: `${RUN}/${backend}/hp/*`, sub: 'hocus' })
      // Two sockets, each carrying one provider per document.
      const sockets = [hocusSocket(server), hocusSocket(server)]
      const hocus = sockets.map((s) => docs.map((d) => hocusDoc(s, d, token)))
      const yjs = docs.map((d) => yjsClient(server, d))
      const natives = docs.map((d, i) => new NativeEditor(server, d, 9100 + i))
      try {
        await Promise.all(hocus.flat().map((c) => hocusSynced(c)))
        await Promise.all(yjs.map((c) => synced(c)))
        for (const c of hocus.flat()) assert.deepEqual(c.seen.scopes, ['read-write'])
        // Every client types 20 characters into each document at once.
        await Promise.all(docs.flatMap((_, i) => [
          typeInto(hocus[0][i], 20, 'h'),
          typeInto(hocus[1][i], 20, 'k'),
          typeInto(yjs[i], 20, 'y'),
          nativeType(natives[i], 20, 'n')
        ]))
        for (let i = 0; i < docs.length; i++) {
          const text = await converged([hocus[0][i], hocus[1][i], yjs[i]], natives[i], `document ${i} to converge`)
          for (const ch of 'hkyn') assert.equal([...text].filter((c) => c === ch).length, 20, `${ch} in ${text}`)
        }
        // Every Hocuspocus update was answered with a sync status once committed.
        await Promise.all(hocus.flat().map((c) => hocusSynced(c)))

        // Awareness: a provider's state reaches the y-websocket client and the native client.
        hocus[0][0].provider.setAwarenessField('user', { name: 'hoc' })
        await waitFor(() => yjs[0].provider.awareness.getStates().get(hocus[0][0].ydoc.clientID)?.user?.name === 'hoc',
          'the y-websocket client to see the provider\'s awareness')
        await waitFor(async () => Object.values(await natives[0].peers()).some((s) => s?.user?.name === 'hoc'),
          'the native client to see the provider\'s awareness')
        await natives[0].presence({ user: { name: 'nat' } })
        await waitFor(() => [...hocus[1][0].provider.awareness.getStates().values()].some((s) => s?.user?.name === 'nat'),
          'the other socket\'s provider to see the native client')

        // Stateless: to the document's other Hocuspocus peers, not to the sender, not to the
        // other document.
        hocus[0][1].provider.sendStateless('{"saved":true}')
        await waitFor(() => hocus[1][1].seen.stateless.length === 1, 'the stateless message on the other socket')
        assert.deepEqual(hocus[1][1].seen.stateless, ['{"saved":true}'])
        await sleep(200)
        assert.deepEqual(hocus[0][1].seen.stateless, [], 'not echoed to the sender')
        assert.deepEqual(hocus[1][0].seen.stateless, [], 'not to another document')
      } finally {
        hocus.flat().forEach((c) => c.destroy())
        sockets.forEach((s) => s.destroy())
        yjs.forEach((c) => c.destroy())
        await Promise.all(natives.map((n) => n.quit()))
      }
    })

    test('a read-only token gets readonly and its edits reach no one; a wrong or missing token is refused for its document only', async () => {
      const base = `${RUN}/${backend}/hp/acl`
      const ro = `${base}/read-only`
      const ok = `${base}/writable`
      const other = `${base}/other`
      const socket = hocusSocket(server)
      const writerSocket = hocusSocket(server)
      const reader = hocusDoc(socket, ro, server.token({ doc: ro, scope: 'read', sub: 'reader' }))
      const writable = hocusDoc(socket, ok, server.token({ doc: ok, sub: 'writer' }))
      // A valid token for another document, a malformed one and none at all, on the same socket.
      const wrongDoc = hocusDoc(socket, other, server.token({ doc: ok, sub: 'writer' }))
      const garbage = hocusDoc(socket, `${base}/garbage`, 'not-a-token')
      const missing = hocusDoc(socket, `${base}/missing`, null)
      const writer = hocusDoc(writerSocket, ro, server.token({ doc: ro, sub: 'writer' }))
      const watcher = yjsClient(server, ro)
      const native = new NativeEditor(server, ro, 9200)
      try {
        await Promise.all([hocusSynced(writable), hocusSynced(writer), synced(watcher)])
        await waitFor(() => reader.provider.isSynced, 'the read-only provider to sync')
        assert.deepEqual(reader.seen.scopes, ['readonly'])
        assert.deepEqual(writable.seen.scopes, ['read-write'])
        for (const refused of [wrongDoc, garbage, missing]) {
          await waitFor(() => refused.seen.denied.length > 0, `${refused.provider.configuration.name} to be refused`)
          assert.deepEqual(refused.seen.scopes, [])
        }
        assert.equal(wrongDoc.seen.denied[0], 'not permitted')
        assert.match(garbage.seen.denied[0], /token/)
        assert.match(missing.seen.denied[0], /token is required/)

        writer.text.insert(0, 'written;')
        await converged([writer, watcher, reader], native, 'the writer\'s text everywhere')
        reader.text.insert(0, 'READONLY;')
        // The read-only edit is answered "not applied" and stays unsynced.
        await waitFor(() => reader.provider.unsyncedChanges === 1, 'the read-only edit to stay unsynced', 5000,
          () => `unsynced ${reader.provider.unsyncedChanges}`)
        // Later writes arrive; the read-only one never does, nor is it stored.
        writer.text.insert(writer.text.length, 'after;')
        await waitFor(() => watcher.content.endsWith('after;'), 'the later write to arrive')
        await native.settle()
        assert.equal(watcher.content, 'written;after;')
        assert.equal(await native.text(), 'written;after;')
        const fresh = yjsClient(server, ro)
        await synced(fresh)
        assert.equal(fresh.content, 'written;after;')
        fresh.destroy()

        // The socket still serves its writable document after the refusals.
        writable.text.insert(0, 'still-here')
        const check = yjsClient(server, ok)
        await waitFor(() => check.content === 'still-here', 'the writable document\'s edit', 20000, () => check.content)
        await hocusSynced(writable)
        check.destroy()
      } finally {
        [reader, writable, wrongDoc, garbage, missing, writer].forEach((c) => c.destroy())
        socket.destroy(); writerSocket.destroy()
        watcher.destroy()
        await native.quit()
      }
    })

    test('sync status comes only after commit: an edit reported synced survives kill -9', async () => {
      const doc = `${RUN}/${backend}/hp/durable`
      const token = server.token({ doc })
      const socket = hocusSocket(server)
      const client = hocusDoc(socket, doc, token)
      try {
        await hocusSynced(client)
        const marks = []
        // Edits until the provider reports every one synced, then SIGKILL at once (in the
        // event handler, before anything else runs).
        const killed = new Promise((resolve) => {
          client.provider.on('unsyncedChanges', ({ number }) => {
            if (number === 0 && marks.length === 20 && server.child.signalCode === null) {
              server.child.kill('SIGKILL')
              resolve()
            }
          })
        })
        for (let i = 0; i < 20; i++) {
          const mark = `[${i}]`
          marks.push(mark)
          client.text.insert(client.text.length, mark)
          if (i % 4 === 0) await sleep(1)
        }
        await killed
        await new Promise((resolve) => server.child.once('exit', resolve))
        await server.restart()
        const fresh = yjsClient(server, doc)
        await synced(fresh)
        const missing = marks.filter((m) => !fresh.content.includes(m))
        assert.deepEqual(missing, [], `edits reported synced but lost by kill -9: ${fresh.content}`)
        fresh.destroy()
      } finally {
        client.destroy()
        socket.destroy()
      }
    })

    test('a token that expires refuses its document alone; the socket\'s other document goes on', async () => {
      const base = `${RUN}/${backend}/hp/expiry`
      const socket = hocusSocket(server)
      const brief = hocusDoc(socket, `${base}/brief`, server.token({ doc: `${base}/brief`, ttl: '2s' }))
      const lasting = hocusDoc(socket, `${base}/lasting`, server.token({ doc: `${base}/lasting` }))
      const watcher = yjsClient(server, `${base}/lasting`)
      try {
        await Promise.all([hocusSynced(brief), hocusSynced(lasting), synced(watcher)])
        await waitFor(() => brief.seen.denied.length > 0, 'the short-lived document to be refused', 10000)
        assert.deepEqual(brief.seen.denied, ['the token has expired'])
        assert.deepEqual(lasting.seen.denied, [])
        lasting.text.insert(0, 'after-expiry')
        await waitFor(() => watcher.content === 'after-expiry', 'the other document\'s edit', 20000, () => watcher.content)
        await hocusSynced(lasting)
      } finally {
        brief.destroy(); lasting.destroy()
        socket.destroy()
        watcher.destroy()
      }
    })

    test('malformed frames close only their own connection; ping gets pong', async () => {
      const doc = `${RUN}/${backend}/hp/malformed`
      const token = server.token({ doc })
      const socket = hocusSocket(server)
      const good = hocusDoc(socket, doc, token)
      const watcher = yjsClient(server, doc)
      try {
        await Promise.all([hocusSynced(good), synced(watcher)])
        const pinger = await rawHocus(server)
        pinger.ws.send(Uint8Array.of(9))
        await waitFor(() => pinger.frames.some((f) => f.length === 1 && f[0] === 10), 'a pong')
        pinger.ws.close()

        const stateless = (payload) => frame(doc, 5, (e) => encoding.writeVarString(e, payload))
        // [what, frames, the close code expected]
        const bad = [
          ['an unknown message type', [authFrame(doc, token), frame(doc, 99)], 4000],
          ['a document name longer than the frame, before any auth', [Uint8Array.of(0x7f, 0x61)], 4000],
          ['an update whose Yjs bytes claim a huge count', [authFrame(doc, token), frame(doc, 0, (e) => {
            encoding.writeVarUint(e, 2)
            encoding.writeVarUint8Array(e, Uint8Array.of(0x9f, 0x9e, 0x97, 0x31))
          })], 4000],
          ['bytes after a message', [authFrame(doc, token), Uint8Array.of(...frame(doc, 3), 0)], 4000],
          ['a text frame', ['hello'], 1003],
          ['a stateless payload over 16 KiB', [authFrame(doc, token), stateless('x'.repeat(16 * 1024 + 1))], 1009],
          ['stateless messages past the burst', [authFrame(doc, token), ...Array.from({ length: 60 }, () => stateless('{}'))], 4029]
        ]
        for (const [what, frames, expected] of bad) {
          const raw = await rawHocus(server)
          for (const f of frames) raw.ws.send(f)
          const code = await Promise.race([raw.closed, sleep(10000).then(() => 'still open')])
          assert.equal(code, expected, what)
        }
        // The provider's connection was not touched: its edits still arrive and are synced.
        good.text.insert(0, 'unharmed')
        await waitFor(() => watcher.content === 'unharmed', 'the good connection\'s edit', 20000, () => watcher.content)
        await hocusSynced(good)
        assert.equal(good.provider.configuration.websocketProvider.status, 'connected')
      } finally {
        good.destroy()
        socket.destroy()
        watcher.destroy()
      }
    })
  })
}
