// A cluster: three `lattice serve` nodes on one fresh PostgreSQL database and one Redis
// (`--redis-url`), with stock Yjs clients (yjs + y-websocket) and a native client on different
// nodes of the same documents. Redis is a `redis-server` child of the test
// (`LATTICE_TEST_REDIS_SERVER`, else PATH); without it the test fails, never skips.
import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  LatticeServer, NativeEditor, RUN, RedisServer, freshPostgresDatabase, headSeq, metric, sleep,
  synced, waitFor, yjsClient,
  converged, count, nativeType, typeFourWaysAndConverge, typeInto
} from './support.mjs'

/** The nodes' `--presence-ttl-secs`: short, so that expiry after a kill is quick to see. */
const PRESENCE_TTL_SECS = 3
const NODES = 3

/** The awareness state `client` holds for Yjs client id `id`, if any. */
const stateOf = (client, id) => client.provider.awareness.getStates().get(id)
const statesOf = (client) => JSON.stringify([...client.provider.awareness.getStates()])

describe('a cluster of three nodes on one PostgreSQL database and one Redis', () => {
  let redis
  let database
  const nodes = []

  before(async () => {
    redis = await new RedisServer().start()
    database = freshPostgresDatabase()
    for (let i = 0; i < NODES; i++) {
      const node = new LatticeServer([
        '--redis-url', redis.url, '--presence-ttl-secs', String(PRESENCE_TTL_SECS)
      ], 'postgres')
      node.db = database.url
      nodes.push(node)
      // One at a time: the first one migrates the fresh database.
      await node.start()
    }
    // Each node says it joined, and through which Redis.
    const joined = new RegExp(`cluster:\\s+(node [0-9a-f]+, )?fan-out through ${redis.url.replaceAll('.', '\\.')}\\b`)
    for (const [i, node] of nodes.entries()) {
      await waitFor(() => joined.test(node.output.join('')),
        `node ${i + 1} to say it joined the cluster`, 20000, () => node.output.join(''))
    }
  })

  after(async () => {
    for (const node of nodes) await node.dispose()
    if (redis) await redis.stop()
    database?.drop()
  })

  // First, while nodes 2 and 3 have had no client at all: anything live there came from node 1.
  test('a document used only on node 1 is not loaded on nodes 2 and 3', async () => {
    const doc = `${RUN}/cluster/node-1-only`
    const client = yjsClient(nodes[0], doc)
    try {
      await synced(client)
      client.text.insert(0, 'only on node 1')
      await waitFor(async () => await headSeq(nodes[0], doc) > 0, 'the edit to be committed')
      client.text.insert(0, 'still ')
      await waitFor(async () => await headSeq(nodes[0], doc) > 1, 'the second edit to be committed')
      // Time for the entries to cross Redis to every node that would take them.
      await sleep(1000)
      assert.equal(await metric(nodes[0], 'lattice_live_documents'), 1, 'node 1 has the document loaded')
      for (const i of [1, 2]) {
        assert.equal(await metric(nodes[i], 'lattice_live_documents'), 0, `live documents on node ${i + 1}`)
      }
    } finally {
      client.destroy()
    }
  })

  test('Yjs clients on every node and a native client converge on one Y.Text', async () => {
    const doc = `${RUN}/cluster/notes`
    const clients = nodes.map((node) => yjsClient(node, doc))
    const native = new NativeEditor(nodes[2], doc, 4242)
    try {
      const text = await typeFourWaysAndConverge(clients, native, 'every client on every node to hold the same text')

      // A client that arrives later on another node reads the same text.
      const late = yjsClient(nodes[1], doc)
      clients.push(late)
      await synced(late)
      assert.equal(late.content, text)
    } finally {
      clients.forEach((c) => c.destroy())
      await native.quit()
    }
  })

  // Last: it kills node 1.
  test('awareness crosses nodes, and a killed node\'s clients expire on the others within the TTL', async () => {
    const doc = `${RUN}/cluster/awareness`
    const ann = yjsClient(nodes[0], doc)
    const watchers = [yjsClient(nodes[1], doc), yjsClient(nodes[2], doc)]
    const native = new NativeEditor(nodes[2], doc, 31337)
    const annId = ann.ydoc.clientID
    const nativeSeesAnn = async () => Object.values(await native.peers()).some((s) => s?.user?.name === 'ann')
    // Entries not renewed within the TTL expire, and y-websocket renews only every 15 s: an app
    // run with a 3 s TTL renews faster, as this one does, every second.
    let renewals = null
    // Every time a watcher loses ann while node 1 is up.
    const lost = []
    try {
      await Promise.all([ann, ...watchers].map((c) => synced(c)))
      await native.settle()
      ann.provider.awareness.setLocalStateField('user', { name: 'ann', color: '#ff0000' })
      renewals = setInterval(() => {
        ann.provider.awareness.setLocalState(ann.provider.awareness.getLocalState())
      }, 1000)
      for (const [i, w] of watchers.entries()) {
        await waitFor(() => stateOf(w, annId)?.user?.name === 'ann',
          `the Yjs client on node ${i + 2} to see ann`, 20000, () => statesOf(w))
      }
      await waitFor(nativeSeesAnn, 'the native client on node 3 to see ann', 20000,
        async () => JSON.stringify(await native.peers()))

      // While node 1 is up, its renewals keep ann present on the other nodes past the TTL.
      watchers.forEach((w, i) => w.provider.awareness.on('change', ({ removed }) => {
        if (removed.includes(annId)) lost.push(`node ${i + 2} at ${new Date().toISOString()}`)
      }))
      await sleep((2 * PRESENCE_TTL_SECS + 1) * 1000)
      assert.deepEqual(lost, [], 'ann stays present on nodes 2 and 3 while her node renews her awareness')
      for (const [i, w] of watchers.entries()) {
        assert.equal(stateOf(w, annId)?.user?.name, 'ann', `ann on node ${i + 2}: ${statesOf(w)}`)
      }
      assert.ok(await nativeSeesAnn(), 'the native client on node 3 still sees ann')

      // SIGKILL: node 1 says goodbye to nobody. Ann's client stays up, renewing and trying to
      // reconnect to node 1.
      const limit = (3 * PRESENCE_TTL_SECS + 5) * 1000
      await nodes[0].kill('SIGKILL')
      const killed = Date.now()
      let last = ''
      await waitFor(async () => {
        const present = {
          node2: stateOf(watchers[0], annId) !== undefined,
          node3: stateOf(watchers[1], annId) !== undefined,
          native: await nativeSeesAnn()
        }
        last = JSON.stringify(present)
        return !Object.values(present).some(Boolean)
      }, `ann's awareness to expire on nodes 2 and 3 within ${limit} ms of node 1's SIGKILL`, limit,
      () => `(ann still present: ${last})`)
      assert.ok(Date.now() - killed <= limit)
    } finally {
      clearInterval(renewals)
      ann.destroy()
      watchers.forEach((c) => c.destroy())
      await native.quit()
    }
  })
})
