// Stock Yjs clients (yjs + y-websocket) and native Lattice clients on the same documents of a
// real Lattice server (`/yjs/{doc}` and `/v1/sync`), with a real SQLite file.
import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import {
  BACKENDS, LatticeServer, NativeEditor, RUN, rawYjs, sleep, synced, waitFor, yjsClient,
  converged, count, nativeType, typeFourWaysAndConverge, typeInto
} from './support.mjs'

/** One frame, decoded: exactly one y-websocket message, nothing left over. */
function decodeOne (frame) {
  const d = decoding.createDecoder(frame)
  const type = decoding.readVarUint(d)
  let sub = null
  let payload = null
  if (type === 0) {
    sub = decoding.readVarUint(d)
    payload = decoding.readVarUint8Array(d)
  } else if (type === 1) {
    payload = decoding.readVarUint8Array(d)
  }
  assert.equal(decoding.hasContent(d), false, 'one message per frame')
  return { type, sub, payload }
}

for (const backend of BACKENDS) {
  describe(`on ${backend}`, () => {
    let server
    before(async () => {
      // A short ping interval so the keep-alive test does not wait 15 s.
      server = await new LatticeServer(['--ping-interval-secs', '1'], backend).start()
    })
    after(async () => { await server.dispose() })

    test('three Yjs clients and a native client converge on one Y.Text, across a restart', async () => {
      const doc = `${RUN}/${backend}/team-a/notes`
      const clients = [yjsClient(server, doc), yjsClient(server, doc), yjsClient(server, doc)]
      const native = new NativeEditor(server, doc, 4242)
      try {
        const text = await typeFourWaysAndConverge(clients, native, 'every client to hold the same text')

        // Restart on the same port: a new client reads the stored text, the old ones reconnect and
        // keep editing.
        await server.restart()
        const fresh = yjsClient(server, doc)
        clients.push(fresh)
        await synced(fresh)
        assert.equal(fresh.content, text)
        await Promise.all(clients.slice(0, 3).map((c) => synced(c)))
        clients[0].text.insert(0, 'after-restart:')
        await native.settle()
        const again = await converged(clients, native, 'convergence after the restart')
        assert.ok(again.startsWith('after-restart:'), again)
        assert.equal(again.length, 160 + 'after-restart:'.length)
      } finally {
        clients.forEach((c) => c.destroy())
        await native.quit()
      }
    })

    test('a Yjs client edits offline and merges on reconnect', async () => {
      const doc = `${RUN}/${backend}/offline/doc`
      const a = yjsClient(server, doc)
      const b = yjsClient(server, doc)
      const native = new NativeEditor(server, doc, 777)
      try {
        await Promise.all([synced(a), synced(b)])
        a.text.insert(0, 'base ')
        await converged([a, b], native, 'the base text')
        a.provider.disconnect()
        a.text.insert(a.text.length, 'offline-a ')
        a.text.insert(0, '<')
        b.text.insert(b.text.length, 'online-b ')
        await native.insert(0, '[n]')
        await native.settle()
        await waitFor(() => b.content.includes('[n]') && b.content.includes('online-b'), 'b to see the online edits')
        assert.ok(!a.content.includes('online-b'), 'a is offline')
        a.provider.connect()
        await synced(a)
        const text = await converged([a, b], native, 'the offline edits to merge')
        for (const part of ['base', 'offline-a', '<', 'online-b', '[n]']) assert.ok(text.includes(part), `${part} in ${text}`)
      } finally {
        a.destroy(); b.destroy()
        await native.quit()
      }
    })

    test('awareness reaches Yjs and native clients, and goes when a client leaves', async () => {
      const doc = `${RUN}/${backend}/team-a/awareness`
      const a = yjsClient(server, doc)
      const b = yjsClient(server, doc)
      const native = new NativeEditor(server, doc, 31337)
      try {
        await Promise.all([synced(a), synced(b)])
        await native.settle()
        a.provider.awareness.setLocalStateField('user', { name: 'ann', color: '#ff0000' })
        await waitFor(() => b.provider.awareness.getStates().get(a.ydoc.clientID)?.user?.name === 'ann',
          'b to see ann', 20000, () => JSON.stringify([...b.provider.awareness.getStates()]))
        await waitFor(async () => Object.values(await native.peers()).some((s) => s?.user?.name === 'ann'),
          'the native client to see ann', 20000, async () => JSON.stringify(await native.peers()))

        await native.presence({ user: { name: 'nat' } })
        await waitFor(() => [...b.provider.awareness.getStates().values()].some((s) => s?.user?.name === 'nat'),
          'b to see the native client', 20000, () => JSON.stringify([...b.provider.awareness.getStates()]))
        // The native client's awareness id cannot collide with a Yjs document's 32-bit client ids.
        const natId = [...b.provider.awareness.getStates()].find(([, s]) => s?.user?.name === 'nat')[0]
        assert.ok(natId > 2 ** 32, `native awareness id ${natId}`)

        a.destroy()
        await waitFor(() => !b.provider.awareness.getStates().has(a.ydoc.clientID), 'ann to leave b\'s awareness')
        await waitFor(async () => !Object.values(await native.peers()).some((s) => s?.user?.name === 'ann'),
          'ann to leave the native client\'s presence')
        await native.presence(null)
        await waitFor(() => ![...b.provider.awareness.getStates().values()].some((s) => s?.user?.name === 'nat'),
          'the native client to leave b\'s awareness')
      } finally {
        b.destroy()
        await native.quit()
      }
    })

    test('the server sends one message per frame, echoes committed updates, and keeps the link alive', async () => {
      const doc = `${RUN}/${backend}/raw/echo`
      const peer = await rawYjs(server, doc)
      try {
        const local = new Y.Doc()
        const step1 = encoding.createEncoder()
        encoding.writeVarUint(step1, 0)
        syncProtocol.writeSyncStep1(step1, local)
        peer.ws.send(encoding.toUint8Array(step1))
        await waitFor(() => peer.frames.length >= 2, 'sync step 2 and step 1')
        const [first, second] = peer.frames.slice(0, 2).map(decodeOne)
        assert.deepEqual([first.type, first.sub, second.type, second.sub], [0, 1, 0, 0])

        let update = null
        local.on('update', (u) => { update = u })
        local.getText('text').insert(0, 'echo me')
        const msg = encoding.createEncoder()
        encoding.writeVarUint(msg, 0)
        syncProtocol.writeUpdate(msg, update)
        peer.ws.send(encoding.toUint8Array(msg))
        await waitFor(() => peer.frames.map(decodeOne).some((m) => m.type === 0 && m.sub === 2 &&
          Buffer.from(m.payload).equals(Buffer.from(update))), 'the update to come back after commit')

        // With a 1 s ping interval, empty awareness messages keep y-websocket's 30 s timer happy.
        const before = peer.frames.length
        await waitFor(() => peer.frames.slice(before).map(decodeOne).some((m) => m.type === 1),
          'a keep-alive awareness message', 5000)
      } finally {
        peer.ws.close()
      }
    })

    test('malformed frames close only their connection and change nothing', async () => {
      const doc = `${RUN}/${backend}/team-a/malformed`
      const good = yjsClient(server, doc)
      const native = new NativeEditor(server, doc, 9090)
      try {
        await synced(good)
        good.text.insert(0, 'intact')
        await converged([good], native, 'the first text')
        const bad = {
          'unknown message type': [9, 1, 2],
          'truncated varint': [0x80],
          'truncated sync message': [0, 2, 0xff, 0xff, 0x03, 1],
          'allocation bomb update': [0, 2, 4, 0x9f, 0x9e, 0x97, 0x31],
          'garbage update': [0, 2, 5, 1, 1, 0xff, 0xff, 0xff],
          'unknown sync type': [0, 9, 0],
          'awareness that is not JSON': [1, 6, 1, 7, 1, 2, 0x7b, 0x7b]
        }
        for (const [name, bytes] of Object.entries(bad)) {
          const peer = await rawYjs(server, doc)
          peer.ws.send(Uint8Array.from(bytes))
          const { code } = await peer.closed
          assert.equal(code, 4000, `${name}: close code`)
        }
        const text = await peer2text(server, doc)
        assert.equal(text, 'intact')
        // The good client was not disturbed and still edits.
        assert.equal(good.content, 'intact')
        good.text.insert(6, '!')
        await native.settle()
        assert.equal(await converged([good], native, 'an edit after the bad frames'), 'intact!')
      } finally {
        good.destroy()
        await native.quit()
      }
    })

    test('tokens: none, another document, prefix, read-only, expiry during the session', async () => {
      const base = `${RUN}/${backend}/acl`
      const doc = `${base}/notes`
      const firstFrameType = (peer) => peer.frames.length > 0 ? peer.frames[0][0] : null

      // No token: a permission-denied message, then 4401 (y-websocket stops reconnecting).
      const anonymous = await rawYjs(server, doc, { token: null })
      assert.equal((await anonymous.closed).code, 4401)
      assert.equal(firstFrameType(anonymous), 2, 'an auth message comes first')
      // A token for another document, or a forged one.
      const other = await rawYjs(server, doc, { token: server.token({ doc: 'somewhere/else' }) })
      assert.equal((await other.closed).code, 4403)
      const forged = await rawYjs(server, doc, { token: server.token({ doc }).slice(0, -4) + 'AAAA' })
      assert.equal((await forged.closed).code, 4401)

      // A prefix token covers the documents under it.
      const writer = yjsClient(server, doc, { token: server.token({ doc: `${base}/*`, sub: 'ann' }) })
      const native = new NativeEditor(server, doc, 5151)
      const reader = yjsClient(server, doc, { token: server.token({ doc, scope: 'read', sub: 'rita' }) })
      let denied = null
      reader.provider.messageHandlers[2] = (_enc, decoder) => {
        decoding.readVarUint(decoder)
        denied = decoding.readVarString(decoder)
      }
      try {
        await Promise.all([synced(writer), synced(reader)])
        writer.text.insert(0, 'owner')
        await converged([writer, reader], native, 'the reader to receive the writer\'s text')

        // A read-only client's write is refused: the document and the other peers are unchanged.
        reader.text.insert(0, 'intruder ')
        await waitFor(() => denied !== null, 'a permission-denied message for the read-only write')
        assert.match(denied, /read-only/)
        await sleep(300)
        assert.equal(writer.content, 'owner')
        assert.equal(await native.text(), 'owner')
        assert.equal(await peer2text(server, doc), 'owner')
        // The reader still receives changes.
        writer.text.insert(5, '!')
        await waitFor(() => reader.content.includes('owner!'), 'the reader to keep receiving')
      } finally {
        writer.destroy(); reader.destroy()
        await native.quit()
      }

      // A token that expires during the session closes the connection with 4401.
      const started = Date.now()
      const shortLived = await rawYjs(server, doc, { token: server.token({ doc, ttl: '2s' }) })
      const { code } = await shortLived.closed
      assert.equal(code, 4401)
      assert.ok(Date.now() - started < 10000, 'closed soon after the expiry')
    })
  })
}

/** What a brand-new Yjs client reads from the server. */
async function peer2text (server, doc) {
  const c = yjsClient(server, doc)
  try {
    await synced(c)
    return c.content
  } finally {
    c.destroy()
  }
}
