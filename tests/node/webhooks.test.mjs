// Webhook signatures checked by a third-party verifier: the `standardwebhooks` package from npm
// (the Standard Webhooks reference library), not our own code. A receiver started here verifies
// every delivery with `new Webhook(secret).verify(body, headers)` and answers 204, or 400 when
// verification throws; the events come from a real `lattice` server (docs/webhooks.md).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'
import { Webhook } from 'standardwebhooks'
import * as Y from 'yjs'
import { LatticeServer, RUN, bearer, postUpdate, waitFor } from './support.mjs'

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'

/** Deliveries as received: headers, raw body, and which secrets verified them. */
const received = []
let secrets = []
let receiver
let server
let admin

before(async () => {
  receiver = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      const verifiedBy = []
      let payload = null
      for (const secret of secrets) {
        try {
          payload = new Webhook(secret).verify(body, req.headers)
          verifiedBy.push(secret)
        } catch {}
      }
      received.push({ headers: req.headers, body, payload, verifiedBy })
      res.writeHead(verifiedBy.length > 0 ? 204 : 400)
      res.end()
    })
  })
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve))
  server = await new LatticeServer(['--webhook-allow-private', '--webhook-coalesce', '100ms']).start()
  admin = server.token({ doc: '*', scope: 'admin', sub: 'node-admin' })
})

after(async () => {
  await server?.dispose()
  await new Promise((resolve) => receiver?.close(resolve) ?? resolve())
})

async function api (method, path, body) {
  const res = await fetch(`${server.httpUrl}${path}`, {
    method,
    headers: { ...bearer(admin), 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  return { status: res.status, json: await res.json() }
}

/** One Yjs update typing `text` into a fresh Y.Doc. */
function update (text) {
  const doc = new Y.Doc()
  doc.getText('t').insert(0, text)
  return Y.encodeStateAsUpdate(doc)
}

test('every delivery verifies with the standardwebhooks package, across a secret rotation', async () => {
  const { port } = receiver.address()
  const added = await api('POST', '/api/admin/webhooks', {
    url: `http://127.0.0.1:${port}/hook`,
    events: ['document.changed']
  })
  assert.equal(added.status, 201, JSON.stringify(added.json))
  const id = added.json.endpoint.id
  const first = added.json.secret
  assert.match(first, /^whsec_/)
  secrets = [first]

  const doc = `webhooks/${RUN}`
  const writer = server.token({ doc, scope: 'write' })
  const wrote = await postUpdate(server, doc, writer, update('hello'))
  assert.equal(wrote.status, 200, JSON.stringify(wrote.json))
  await waitFor(() => received.length >= 1, 'the first delivery')
  const one = received[0]
  assert.deepEqual(one.verifiedBy, [first], 'verified with the endpoint secret')
  assert.equal(one.payload.type, 'document.changed')
  assert.equal(one.payload.data.document, doc)
  assert.equal(one.payload.data.first_seq, 1)
  assert.equal(one.payload.data.last_seq, 1)
  assert.equal(one.payload.data.url, `${server.httpUrl}/v1/state/${doc}`)
  assert.equal(one.headers['webhook-id'].startsWith('msg_'), true)
  // The link fetches the content (one Yjs update) with a read token.
  const state = await fetch(one.payload.data.url, { headers: bearer(server.token({ doc, scope: 'read' })) })
  assert.equal(state.status, 200)
  const copy = new Y.Doc()
  Y.applyUpdate(copy, new Uint8Array(await state.arrayBuffer()))
  assert.equal(copy.getText('t').toString(), 'hello')

  // The verifier is not vacuous: a changed body or another secret fails.
  assert.throws(() => new Webhook(first).verify(one.body.replace('hello', 'HELLO').replace(doc, `${doc}x`), one.headers))
  const other = `whsec_${randomBytes(24).toString('base64')}`
  assert.throws(() => new Webhook(other).verify(one.body, one.headers))

  // Rotation: the next delivery carries both signatures, so receivers holding either secret
  // accept it while they switch.
  const rotated = await api('POST', `/api/admin/webhooks/${id}/rotate`)
  assert.equal(rotated.status, 200, JSON.stringify(rotated.json))
  const second = rotated.json.secret
  assert.notEqual(second, first)
  secrets = [first, second]
  assert.equal((await postUpdate(server, doc, writer, update('again'))).status, 200)
  await waitFor(() => received.length >= 2, 'the delivery after the rotation')
  const two = received[1]
  assert.deepEqual(two.verifiedBy, [first, second], 'both secrets verify during the overlap')
  assert.equal(two.headers['webhook-signature'].split(' ').length, 2)
  assert.equal(two.payload.data.first_seq, 2)
  assert.ok(received.every((d) => d.verifiedBy.length > 0), 'no delivery failed verification')
})

test('the admin UI lists the endpoint and its recent deliveries', async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run \`cargo xtask setup\``)
  const { json } = await api('GET', '/api/admin/webhooks')
  assert.equal(json.endpoints.length, 1, 'the endpoint of the test above')
  const id = json.endpoints[0].id
  const profile = mkdtempSync(path.join(tmpdir(), 'lattice-chromium-webhooks-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  try {
    const page = context.pages()[0] ?? await context.newPage()
    await page.goto(`${server.httpUrl}/admin?token=${encodeURIComponent(admin)}`)
    await page.click('[data-testid=webhooks-open]')
    const item = page.locator(`[data-testid=webhook-item][data-id="${id}"]`)
    await item.waitFor({ timeout: 10000 })
    assert.match(await item.textContent(), /document\.changed/)
    await item.locator('button', { hasText: 'Deliveries' }).click()
    const rows = page.locator('[data-testid=delivery-item]')
    await waitFor(async () => (await rows.count()) === 2, 'both deliveries to be listed')
    const text = await page.textContent('[data-testid=delivery-list]')
    assert.match(text, /delivered/)
    assert.ok(received.every((d) => text.includes(d.headers['webhook-id'])), 'every event id is shown')
  } finally {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  }
})
