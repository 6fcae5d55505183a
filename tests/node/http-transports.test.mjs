// The HTTP transports (docs/http-api.md) with real npm clients against a real Lattice server: an
// `eventsource` reader, `fetch` writers of raw Yjs updates and a stock y-websocket client converge;
// an SSE stream resumes by `Last-Event-ID` with exactly what it missed; a long poll wakes on a
// commit; a write answered 200 survives `kill -9`; `Idempotency-Key` retries are not applied twice.
import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import * as Y from 'yjs'
import { decode, encode } from '@msgpack/msgpack'
import {
  BACKENDS, LatticeServer, RUN, bearer, headSeq, postUpdate, sleep, sseReader, synced, waitFor,
  yjsClient
} from './support.mjs'

/**
 * A Y.Doc whose edits go to the server one `POST /v1/updates/{doc}` each, in order, so every
 * update the server gets builds only on what it already holds.
 */
class HttpWriter {
  constructor (server, doc, { token = server.token({ doc, sub: 'http-writer' }) } = {}) {
    Object.assign(this, { server, doc, token })
    this.ydoc = new Y.Doc()
    this.text = this.ydoc.getText('text')
    this.update = null
    this.ydoc.on('update', (u, origin) => { if (origin !== 'server') this.update = u })
  }

  get content () { return this.text.toString() }

  /** Applies `edit` to the text and POSTs the update it made; the server's answer. */
  async edit (edit) {
    this.update = null
    edit(this.text)
    assert.ok(this.update, 'the edit made an update')
    return postUpdate(this.server, this.doc, this.token, this.update)
  }

  /** A write that must succeed: its `seq`. */
  async write (edit) {
    const r = await this.edit(edit)
    assert.equal(r.status, 200, JSON.stringify(r.json))
    assert.equal(r.json.changed, true)
    return r.json.seq
  }

  /** Takes what the server has and this Y.Doc lacks, from `GET /v1/state?sv=`. */
  async pull () {
    const sv = Buffer.from(Y.encodeStateVector(this.ydoc)).toString('base64')
    const res = await fetch(`${this.server.httpUrl}/v1/state/${this.doc}?sv=${encodeURIComponent(sv)}`,
      { headers: bearer(this.token) })
    assert.equal(res.status, 200)
    const bytes = new Uint8Array(await res.arrayBuffer())
    if (bytes.length > 0) Y.applyUpdate(this.ydoc, bytes, 'server')
  }
}

/** The document as one Yjs update from `GET /v1/state/{doc}`, applied to a fresh Y.Doc. */
async function stateText (server, doc) {
  const res = await fetch(`${server.httpUrl}/v1/state/${doc}`, { headers: bearer(server.token({ doc, scope: 'read' })) })
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('content-type'), 'application/octet-stream')
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
  return { text: ydoc.getText('text').toString(), seq: Number(res.headers.get('lattice-seq')) }
}

function count (s, ch) { return [...s].filter((c) => c === ch).length }

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** `[from, from + 1, …, to]`. */
const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

/**
 * A Lattice `Delta` that announces `replica`'s absolute count of counter `name`, as the server's
 * `rmp_serde::to_vec_named` writes it: `{"counters": {name: {replica: count}}}`. `GCounter` is
 * transparent over `BTreeMap<ReplicaId, u64>` and a `ReplicaId` is a MessagePack integer, but
 * @msgpack/msgpack writes every map key as a string, so the maps' headers are written here
 * (one entry each: fixmap 0x81) around values the library encodes.
 */
function counterDelta (name, replica, count) {
  return Buffer.concat([
    [0x81], encode('counters'), [0x81], encode(name), [0x81], encode(replica), encode(count)
  ].map((part) => Uint8Array.from(part)))
}

for (const backend of BACKENDS) {
  describe(`HTTP transports on ${backend}`, () => {
    let server
    before(async () => { server = await new LatticeServer([], backend).start() })
    after(async () => { await server.dispose() })

    test('an SSE reader, an HTTP writer and a y-websocket client converge on one Y.Text', async () => {
      const doc = `${RUN}/${backend}/http/converge`
      const reader = sseReader(server, doc)
      const ws = yjsClient(server, doc, { token: server.token({ doc, sub: 'ws-client' }) })
      const writer = new HttpWriter(server, doc)
      try {
        await synced(ws)
        await waitFor(() => reader.events.length > 0, 'the sync event', 20000, () => reader.errors.join())
        assert.equal(reader.events[0].type, 'sync')
        assert.equal(reader.events[0].id, String(reader.events[0].data.seq))

        const posted = []
        await Promise.all([
          (async () => {
            for (let i = 0; i < 40; i++) {
              ws.text.insert(Math.floor(Math.random() * (ws.text.length + 1)), 'w')
              if (i % 5 === 0) await sleep(2)
            }
          })(),
          (async () => {
            for (let i = 0; i < 40; i++) {
              posted.push(await writer.write((t) => t.insert(Math.floor(Math.random() * (t.length + 1)), 'p')))
            }
          })()
        ])
        await writer.pull()
        let last = ''
        await waitFor(() => {
          last = JSON.stringify({ sse: reader.text, ws: ws.content, http: writer.content })
          return reader.text.length === 80 && reader.text === ws.content && ws.content === writer.content
        }, 'the three clients to converge', 30000, () => `${last} ${reader.errors.join()}`)
        assert.equal(count(reader.text, 'w'), 40)
        assert.equal(count(reader.text, 'p'), 40)
        assert.equal((await stateText(server, doc)).text, reader.text)

        // Each committed entry came once, in order, and every acknowledged POST is among them.
        const seqs = reader.deltaSeqs
        assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))
        assert.equal(new Set(seqs).size, seqs.length, 'no entry twice')
        assert.equal(new Set(posted).size, posted.length, 'each POST has its own seq')
        for (const seq of posted) assert.ok(seqs.includes(seq), `POSTed seq ${seq} reached the SSE reader`)
        for (const e of reader.events.filter((e) => e.type === 'delta')) assert.equal(e.id, String(e.data.seq))
        assert.deepEqual(reader.errors, [])
      } finally {
        reader.close()
        ws.destroy()
      }
    })

    test('an SSE stream closed mid-way resumes by Last-Event-ID with exactly the missed entries', async () => {
      const doc = `${RUN}/${backend}/http/resume`
      const writer = new HttpWriter(server, doc)
      await writer.write((t) => t.insert(0, '[start]'))
      const first = sseReader(server, doc)
      let second = null
      try {
        await waitFor(() => first.events.length > 0, 'the first stream\'s sync', 20000, () => first.errors.join())
        assert.equal(first.events[0].type, 'sync')
        const syncSeq = first.events[0].data.seq

        // Writes keep coming while the first stream is closed part-way through them; the second
        // half waits for the close, so some entries are always missed.
        const posted = []
        const burst = (async () => {
          for (let i = 0; i < 30; i++) {
            if (i === 15) await waitFor(() => first.closed, 'the first stream to close')
            posted.push(await writer.write((t) => t.insert(t.length, `<${i}>`)))
            await sleep(3)
          }
        })()
        await waitFor(() => first.deltaSeqs.length >= 8, 'some live entries on the first stream')
        first.close()
        await burst
        const seen = first.deltaSeqs
        const lastId = Number(first.events.at(-1).id)
        assert.equal(lastId, seen.at(-1))
        assert.ok(lastId < posted.at(-1), 'the stream was closed before the burst ended')

        second = sseReader(server, doc, { lastEventId: lastId })
        await waitFor(() => second.deltaSeqs.includes(posted.at(-1)), 'the missed entries', 20000,
          () => JSON.stringify({ got: second.deltaSeqs, errors: second.errors }))
        // Exactly the missed entries, no `sync` first, then the live ones.
        assert.equal(second.events[0].type, 'delta', 'a resume starts with the entries, not a sync')
        assert.deepEqual(second.deltaSeqs, range(lastId + 1, posted.at(-1)))
        const live = []
        for (let i = 0; i < 3; i++) live.push(await writer.write((t) => t.insert(t.length, `(live ${i})`)))
        await waitFor(() => second.deltaSeqs.includes(live.at(-1)), 'the live entries after the resume')
        await sleep(200)

        const all = [...seen, ...second.deltaSeqs]
        assert.deepEqual(all, range(syncSeq + 1, live.at(-1)), 'every entry once, none missing')
        assert.deepEqual(posted.concat(live), range(syncSeq + 1, live.at(-1)))
        for (const e of second.events) assert.equal(e.id, String(e.data.seq))
        // The sync and the entries of both streams rebuild the writer's text.
        const ydoc = new Y.Doc()
        for (const e of [...first.events, ...second.events]) {
          if (e.data.update !== undefined) Y.applyUpdate(ydoc, Buffer.from(e.data.update, 'base64'))
        }
        assert.equal(ydoc.getText('text').toString(), writer.content)
        assert.deepEqual([...first.errors, ...second.errors], [])
      } finally {
        first.close()
        second?.close()
      }
    })

    test('a waiting long poll answers soon after a write is acknowledged', async () => {
      const doc = `${RUN}/${backend}/http/long-poll`
      const writer = new HttpWriter(server, doc)
      const reader = server.token({ doc, scope: 'read', sub: 'poller' })
      let head = await writer.write((t) => t.insert(0, 'x'))
      // From the POST's 200 to the poll's answer (negative: the poll was answered first, as
      // the room fans an entry out when it commits it), and from sending the POST.
      const afterAck = []
      const afterSend = []
      for (let round = 0; round < 20; round++) {
        let answeredAt = null
        const started = performance.now()
        const poll = fetch(`${server.httpUrl}/v1/updates/${doc}?after=${head}&wait_ms=10000`, { headers: bearer(reader) })
          .then(async (res) => {
            answeredAt = performance.now()
            return { status: res.status, next: res.headers.get('lattice-next-after'), body: await res.json() }
          })
        await sleep(50)
        assert.equal(answeredAt, null, 'the poll waits while nothing is new')
        const sentAt = performance.now()
        const written = await writer.edit((t) => t.insert(t.length, String(round % 10)))
        const ackedAt = performance.now()
        assert.equal(written.status, 200)
        const answer = await poll
        assert.equal(answer.status, 200)
        assert.deepEqual(answer.body.events.map((e) => [e.type, e.seq]), [['delta', written.json.seq]])
        assert.equal(answer.body.next_after, written.json.seq)
        assert.equal(answer.next, String(written.json.seq))
        assert.ok(answeredAt - started < 5000, 'the poll did not run into its wait_ms')
        afterAck.push(answeredAt - ackedAt)
        afterSend.push(answeredAt - sentAt)
        head = written.json.seq
      }
      const ms = (x) => `${x.toFixed(1)} ms`
      const mid = median(afterAck)
      console.log(`long poll on ${backend}, ${afterAck.length} rounds: answered ${ms(mid)} (median) after the ` +
        `POST's 200 (min ${ms(Math.min(...afterAck))}, max ${ms(Math.max(...afterAck))}); ` +
        `${ms(median(afterSend))} (median) after the POST was sent (max ${ms(Math.max(...afterSend))})`)
      assert.ok(mid < 200, `median wake-up ${mid} ms after the POST's 200`)

      // Nothing new: 204 after the wait, naming the same seq.
      const quiet = await fetch(`${server.httpUrl}/v1/updates/${doc}?after=${head}&wait_ms=300`, { headers: bearer(reader) })
      assert.equal(quiet.status, 204)
      assert.equal(quiet.headers.get('lattice-next-after'), String(head))
    })

    test('a retried write with its Idempotency-Key is answered again, not applied again', async () => {
      const doc = `${RUN}/${backend}/http/idempotent`
      const token = server.token({ doc, sub: 'retrier' })
      const writer = new HttpWriter(server, doc, { token })
      await writer.write((t) => t.insert(0, 'base '))
      writer.text.insert(writer.text.length, 'once')
      const update = writer.update
      const key = { 'Idempotency-Key': `yjs-${RUN}-${backend}` }

      const first = await postUpdate(server, doc, token, update, key)
      assert.equal(first.status, 200)
      assert.equal(first.json.changed, true)
      assert.equal(first.headers.get('idempotent-replayed'), null)
      const retry = await postUpdate(server, doc, token, update, key)
      assert.equal(retry.status, 200)
      assert.deepEqual(retry.json, first.json, 'the first answer, changed: true included')
      assert.equal(retry.headers.get('idempotent-replayed'), 'true')
      assert.equal(await headSeq(server, doc), first.json.seq, 'the retry took no seq')
      // The same body with another key reaches the document, which already holds it.
      const otherKey = await postUpdate(server, doc, token, update, { 'Idempotency-Key': `other-${RUN}` })
      assert.deepEqual(otherKey.json, { seq: first.json.seq, changed: false })
      // The key with another body is refused and stores nothing.
      writer.text.insert(0, 'never ')
      const reused = await postUpdate(server, doc, token, writer.update, key)
      assert.equal(reused.status, 409)
      assert.equal(reused.json.error, 'idempotency_key_reused')
      assert.equal(await headSeq(server, doc), first.json.seq)
      assert.equal((await stateText(server, doc)).text, 'base once')

      // A counter increment as a MessagePack Lattice delta, POSTed twice with one key.
      const replica = 0x5e5e
      const bump = counterDelta('clicks', replica, 5)
      assert.deepEqual(decode(bump), { counters: { clicks: { [replica]: 5 } } })
      const counterKey = { 'Content-Type': 'application/msgpack', 'Idempotency-Key': `counter-${RUN}-${backend}` }
      const bumped = await postUpdate(server, doc, token, bump, counterKey)
      assert.equal(bumped.status, 200, JSON.stringify(bumped.json))
      assert.deepEqual(bumped.json, { seq: first.json.seq + 1, changed: true })
      const bumpedAgain = await postUpdate(server, doc, token, bump, counterKey)
      assert.deepEqual(bumpedAgain.json, bumped.json)
      assert.equal(bumpedAgain.headers.get('idempotent-replayed'), 'true')
      assert.equal(await headSeq(server, doc), bumped.json.seq, 'the retry took no seq')
      const view = await fetch(`${server.httpUrl}/v1/docs/${doc}`, { headers: bearer(token) })
      assert.equal(view.status, 200)
      const json = await view.json()
      assert.equal(json.counters.clicks, 5, 'counted once')
      assert.equal(json.texts.text, 'base once')
    })

    test('every write answered 200 survives kill -9 of the server', async () => {
      const doc = `${RUN}/${backend}/http/durable`
      // Independent writers (each its own Y.Doc, so no update waits for another's), writing until
      // the server dies under them: the acknowledged writes must all be there after the restart.
      const writers = Array.from({ length: 6 }, () => new HttpWriter(server, doc))
      const acked = []
      let dying = false
      const running = writers.map(async (w, n) => {
        for (let i = 0; ; i++) {
          const mark = `[${n}.${i}]`
          let r
          try {
            r = await w.edit((t) => t.insert(0, mark))
          } catch (e) {
            if (dying) return
            throw e
          }
          if (r.status !== 200) {
            if (dying) return
            assert.fail(`write ${mark}: ${r.status} ${JSON.stringify(r.json)}`)
          }
          acked.push({ mark, seq: r.json.seq })
        }
      })
      await waitFor(() => acked.length >= 60, '60 acknowledged writes')
      dying = true
      await server.kill('SIGKILL')
      await Promise.all(running)
      const ackedAtKill = acked.length

      await server.restart()
      const { text, seq } = await stateText(server, doc)
      const missing = acked.filter((a) => !text.includes(a.mark)).map((a) => a.mark)
      assert.deepEqual(missing, [], `acknowledged writes lost by kill -9 (${acked.length} acknowledged)`)
      assert.ok(seq >= Math.max(...acked.map((a) => a.seq)), `Lattice-Seq ${seq}`)
      assert.equal(new Set(acked.map((a) => a.seq)).size, acked.length, 'each acknowledged write has its own seq')
      console.log(`kill -9 on ${backend}: ${ackedAtKill} acknowledged writes, all present after the restart (head ${seq})`)
    })
  })
}
