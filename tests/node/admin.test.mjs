// The admin UI (`/admin`) in headless Chromium against a real server: two authors edit through
// stock Yjs clients, then the admin picks the document, moves through the timeline, reads the
// text at a version, restores it, and the connected client receives the restored text.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import * as Y from 'yjs'
import { LatticeServer, RUN, postUpdate, synced, waitFor, yjsClient } from './support.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const artifacts = process.env.LATTICE_ARTIFACTS_DIR ?? path.resolve(here, '../../target/test-artifacts')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'

let server
before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run \`cargo xtask setup\``)
  server = await new LatticeServer().start()
  mkdirSync(artifacts, { recursive: true })
})
after(async () => { await server?.dispose() })

test('the admin UI shows the timeline and a version, and restores it live', async () => {
  const doc = `admin/${RUN}`
  const alice = yjsClient(server, doc, { token: server.token({ doc, sub: 'alice' }) })
  const bob = yjsClient(server, doc, { token: server.token({ doc, sub: 'bob' }) })
  const profile = mkdtempSync(path.join(tmpdir(), 'lattice-chromium-admin-'))
  let context
  try {
    await synced(alice)
    await synced(bob)
    alice.text.insert(0, 'Hello')
    await waitFor(() => bob.content === 'Hello', 'bob to see alice')
    bob.text.insert(5, ' world')
    await waitFor(() => alice.content === 'Hello world', 'alice to see bob')
    alice.text.delete(0, 5)
    alice.text.insert(0, 'Goodbye')
    await waitFor(() => bob.content === 'Goodbye world', 'bob to see the rewrite')

    const admin = server.token({ doc: '*', scope: 'admin', sub: 'root' })
    const history = async () => {
      const res = await fetch(`http://${server.addr}/api/admin/history/${doc}?after=0&limit=100`, { headers: { Authorization: `Bearer ${admin}` } })
      assert.equal(res.status, 200)
      return res.json()
    }
    await waitFor(async () => (await history()).entries.length >= 3, 'the edits to be committed')
    const entries = (await history()).entries
    const authors = new Set(entries.map((e) => e.author))
    assert.deepEqual([...authors].sort(), ['alice', 'bob'])
    const bobSeq = entries.find((e) => e.author === 'bob').seq

    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 860 }
    })
    const page = context.pages()[0] ?? await context.newPage()
    await page.goto(`http://${server.addr}/admin?token=${encodeURIComponent(admin)}`)
    await page.click(`[data-testid=doc-item][data-doc="${doc}"]`)
    // One collapsed row per author session; opening them lists every change.
    const headers = page.locator('[data-testid=session-header]')
    await waitFor(async () => (await headers.count()) >= 2, 'the timeline to list the sessions')
    for (const h of await headers.all()) await h.click()
    const timeline = page.locator('[data-testid=timeline-entry]')
    await waitFor(async () => (await timeline.count()) === entries.length, 'the timeline to list every change')
    // The shown text at a version: what the page displays, without the struck-out deletions.
    const shown = () => page.evaluate(() => {
      const box = document.querySelector('[data-testid=content-text][data-name=text]')
      if (!box) return null
      const copy = box.cloneNode(true)
      for (const del of copy.querySelectorAll('del')) del.remove()
      return copy.textContent
    })
    await page.click(`[data-testid=timeline-entry][data-seq="${entries[0].seq}"]`)
    await waitFor(async () => (await shown()) === 'Hello', 'version 1 to show "Hello"', 10000, async () => `(shown ${JSON.stringify(await shown())})`)
    await page.click(`[data-testid=timeline-entry][data-seq="${bobSeq}"]`)
    await waitFor(async () => (await shown()) === 'Hello world', `version ${bobSeq} to show "Hello world"`, 10000, async () => `(shown ${JSON.stringify(await shown())})`)
    assert.match(await page.textContent('[data-testid=version-label]'), new RegExp(`version ${bobSeq} of`))

    await page.click('[data-testid=restore-button]')
    await page.locator('[data-testid=confirm-dialog]').waitFor()
    await page.click('[data-testid=confirm-restore]')
    await page.locator('[data-testid=restore-result]', { hasText: `Restored to version ${bobSeq}` }).waitFor({ timeout: 15000 })
    // The connected Yjs clients receive the restore live.
    await waitFor(() => alice.content === 'Hello world' && bob.content === 'Hello world', 'the clients to receive the restore', 15000,
      () => `(alice ${JSON.stringify(alice.content)}, bob ${JSON.stringify(bob.content)})`)
    const restore = (await history()).entries.at(-1)
    assert.equal(restore.author, 'root')
    await page.screenshot({ path: path.join(artifacts, 'admin.png'), fullPage: true })
  } finally {
    await context?.close()
    rmSync(profile, { recursive: true, force: true })
    alice.destroy()
    bob.destroy()
  }
})

test('a 1,000-change session is one row of the timeline until opened', async () => {
  const doc = `admin/${RUN}-long-session`
  // 1,000 single-character edits by one author, each its own log entry, then two by another.
  // Each author edits its own Y.Doc (its own Yjs client id: ids belong to their first author).
  const post = async (token, ydoc, insert) => {
    const sv = Y.encodeStateVector(ydoc)
    insert(ydoc.getText('text'))
    const res = await postUpdate(server, doc, token, Y.encodeStateAsUpdate(ydoc, sv))
    assert.equal(res.status, 200, JSON.stringify(res.json))
  }
  const typing = new Y.Doc()
  const typist = server.token({ doc, sub: 'typist' })
  for (let i = 0; i < 1000; i++) await post(typist, typing, (t) => t.insert(t.length, String(i % 10)))
  const editing = new Y.Doc()
  Y.applyUpdate(editing, Y.encodeStateAsUpdate(typing))
  const editor = server.token({ doc, sub: 'editor' })
  await post(editor, editing, (t) => t.insert(0, 'Title: '))
  await post(editor, editing, (t) => t.insert(t.length, '.'))

  const admin = server.token({ doc: '*', scope: 'admin', sub: 'root' })
  const profile = mkdtempSync(path.join(tmpdir(), 'lattice-chromium-admin-'))
  let context
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1280, height: 860 }
    })
    const page = context.pages()[0] ?? await context.newPage()
    await page.goto(`http://${server.addr}/admin?token=${encodeURIComponent(admin)}`)
    await page.click(`[data-testid=doc-item][data-doc="${doc}"]`)
    const headers = page.locator('[data-testid=session-header]')
    await waitFor(async () => (await headers.count()) === 2, 'two session rows')
    // Newest first: the editor's session, then the typist's 1,000 changes in one row.
    const rows = await headers.allTextContents()
    assert.match(rows[0], /editor · 2 changes · #1001–1002/)
    assert.match(rows[1], /typist · 1000 changes · #1–1000/)
    assert.equal(await page.locator('[data-testid=timeline-entry]').count(), 0, 'collapsed rows list no entries')
    // The version slider still spans every change.
    assert.match(await page.textContent('[data-testid=version-label]'), /version 1002 of 1002/)
    await page.screenshot({ path: path.join(artifacts, 'admin-sessions.png'), fullPage: true })
    assert.ok(existsSync(path.join(artifacts, 'admin-sessions.png')))

    // Opened, the session lists its newest 200 changes, then 200 more on request.
    await headers.nth(1).click()
    const entries = page.locator('[data-testid=timeline-entry]')
    await waitFor(async () => (await entries.count()) === 200, 'the newest 200 changes of the session')
    assert.equal(await entries.first().getAttribute('data-seq'), '1000')
    await page.locator('[data-testid=session-more]:visible').click()
    await waitFor(async () => (await entries.count()) === 400, '200 more')
    assert.equal(await entries.last().getAttribute('data-seq'), '601')
    // A change opens its version, with the diff.
    await page.click('[data-testid=timeline-entry][data-seq="700"]')
    await waitFor(async () => /version 700 of 1002/.test(await page.textContent('[data-testid=version-label]')), 'version 700')
  } finally {
    await context?.close()
    rmSync(profile, { recursive: true, force: true })
  }
})
