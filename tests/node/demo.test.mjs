// Browser end-to-end tests of the demo page: the wasm client, the Yjs bridge and CodeMirror in
// headless Chromium (Debian's, driven by playwright-core) against a real `lattice` server that
// serves the web build (`cargo xtask build-web` → target/web/demo).
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { LatticeServer, RUN, waitFor } from './support.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const webDir = process.env.LATTICE_WEB_DIR ?? path.resolve(here, '../../target/web/demo')
const artifacts = process.env.LATTICE_ARTIFACTS_DIR ?? path.resolve(here, '../../target/test-artifacts')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]

/** A browser profile of its own (fresh user-data dir: its own IndexedDB) with one page. */
class Browser {
  constructor (name) {
    this.name = name
    this.profile = mkdtempSync(path.join(tmpdir(), `lattice-chromium-${name}-`))
    this.blocked = false
    this.blockedHttp = null
    this.sockets = []
    this.logs = []
  }

  async start () {
    this.context = await chromium.launchPersistentContext(this.profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 860 }
    })
    // Every WebSocket of this profile passes through here, so the test can cut the connection
    // (and refuse new ones) while HTTP keeps working: a reload still loads the page.
    await this.context.routeWebSocket(/\/v1\/sync/, (ws) => {
      if (this.blocked) {
        ws.close({ code: 4000, reason: 'blocked by the test' })
        return
      }
      const server = ws.connectToServer()
      this.sockets.push({ ws, server })
    })
    // The HTTP transports likewise: `blockedHttp` is a pattern of the paths refused.
    await this.context.route(/\/v1\/(events|updates|presence)\//, (route) => {
      if (this.blockedHttp?.test(new URL(route.request().url()).pathname)) {
        return route.abort('connectionrefused')
      }
      return route.continue()
    })
    this.page = this.context.pages()[0] ?? await this.context.newPage()
    this.page.on('console', (m) => this.logs.push(`[${m.type()}] ${m.text()}`))
    this.page.on('pageerror', (e) => this.logs.push(`[pageerror] ${e.message}`))
    return this
  }

  async open (url) {
    await this.page.goto(url)
    await this.ready()
  }

  async ready () {
    await this.page.waitForSelector('body[data-ready="true"]', { state: 'attached', timeout: 30000 })
  }

  /** Cuts the page off: WebSockets and the HTTP transports (the page itself still loads). */
  async block () {
    this.blockedHttp = /^\/v1\/(events|updates|presence)\//
    await this.blockWebSockets()
  }

  /** Refuses WebSockets only (a proxy that does not upgrade). */
  async blockWebSockets () {
    this.blocked = true
    for (const { ws, server } of this.sockets.splice(0)) {
      await server.close().catch(() => {})
      await ws.close().catch(() => {})
    }
  }

  unblock () {
    this.blocked = false
    this.blockedHttp = null
  }

  status () { return this.page.textContent('[data-testid=status]') }
  transport () { return this.page.textContent('[data-testid=transport]') }
  /** The editor's text (CodeMirror's document) and the wasm document's text, which must agree. */
  async texts () {
    return this.page.evaluate(() => ({
      editor: window.latticeDemo.view.state.doc.toString(),
      lattice: window.latticeDemo.doc.text('body').toString()
    }))
  }

  async text () {
    const { editor, lattice } = await this.texts()
    assert.equal(editor, lattice, `${this.name}: the editor and the Lattice document disagree`)
    return editor
  }

  pending () { return this.page.evaluate(() => window.latticeDemo.client.pendingCount) }
  counter () { return this.page.textContent('[data-testid=counter-value]') }
  title () { return this.page.inputValue('[data-testid=title]') }

  async typeAtEnd (text) {
    await this.page.click('.cm-content')
    await this.page.keyboard.press('Control+End')
    await this.page.keyboard.type(text, { delay: 5 })
  }

  async setTitle (text) {
    await this.page.fill('[data-testid=title]', text)
    await this.page.keyboard.press('Enter')
  }

  async applaud (times) {
    for (let i = 0; i < times; i++) await this.page.click('[data-testid=counter-button]')
  }

  explain () { return `\n--- ${this.name} console ---\n${this.logs.slice(-30).join('\n')}` }

  async close () {
    await this.context?.close()
    rmSync(this.profile, { recursive: true, force: true })
  }
}

async function synced (b) {
  await waitFor(async () => (await b.status()) === 'synced', `${b.name} to be synced`, 30000,
    async () => `(status ${await b.status()})${b.explain()}`)
}

describe('demo page in Chromium', () => {
  let server
  let token
  before(async () => {
    assert.ok(existsSync(path.join(webDir, 'index.html')),
      `no web build at ${webDir}: run \`cargo xtask build-web\` (cargo xtask test does)`)
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run \`cargo xtask setup\``)
    server = await new LatticeServer(['--web-dir', webDir]).start()
    token = server.token({ doc: 'demo/*', scope: 'write', sub: 'browser-tests' })
    mkdirSync(artifacts, { recursive: true })
  })
  after(async () => { await server?.dispose() })

  const url = (doc) => `http://${server.addr}/?doc=${encodeURIComponent(doc)}&token=${encodeURIComponent(token)}`

  test('two pages converge on text, counter and title; the demo is screenshotted', async () => {
    const doc = `demo/${RUN}-converge`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.open(url(doc))
      await b.open(url(doc))
      await synced(a)
      await synced(b)
      await a.typeAtEnd('Hello from A. ')
      await waitFor(async () => (await b.text()).includes('Hello from A. '), 'B to see A\'s text', 20000, () => b.explain())
      await b.typeAtEnd('Hi from B!')
      await a.applaud(3)
      await b.applaud(2)
      await a.setTitle('Meeting notes')
      const want = 'Hello from A. Hi from B!'
      for (const p of [a, b]) {
        await waitFor(async () => (await p.text()) === want && (await p.counter()) === '5' &&
          (await p.title()) === 'Meeting notes', `${p.name} to converge`, 20000,
        async () => `(text ${JSON.stringify(await p.text())}, counter ${await p.counter()}, title ${JSON.stringify(await p.title())})${p.explain()}`)
      }
      // The server holds the same document.
      const res = await fetch(`http://${server.addr}/v1/docs/${doc}`, { headers: { Authorization: `Bearer ${token}` } })
      assert.equal(res.status, 200)
      const held = await res.json()
      assert.equal(held.texts.body, want)
      assert.equal(held.counters.applause, 5)
      assert.equal(held.registers.title, 'Meeting notes')
      await waitFor(async () => (await a.pending()) === 0 && (await b.pending()) === 0, 'every edit to be acknowledged')
      await a.page.screenshot({ path: path.join(artifacts, 'demo.png'), fullPage: true })
      assert.ok(existsSync(path.join(artifacts, 'demo.png')))
    } finally {
      await a.close()
      await b.close()
    }
  })

  test('offline edits survive a reload and reach the other page when the connection returns', async () => {
    const doc = `demo/${RUN}-offline`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.open(url(doc))
      await b.open(url(doc))
      await synced(a)
      await synced(b)
      await a.typeAtEnd('Shared start. ')
      await waitFor(async () => (await b.text()) === 'Shared start. ', 'B to see the start')

      await a.block()
      await waitFor(async () => ['offline', 'connecting'].includes(await a.status()), 'A to notice it is offline')
      await a.typeAtEnd('Written offline by A. ')
      await a.applaud(4)
      await a.setTitle('Offline title')
      await waitFor(async () => (await a.pending()) > 0, 'A to hold pending edits')
      // Nothing of it reached B.
      await new Promise((resolve) => setTimeout(resolve, 500))
      assert.equal(await b.text(), 'Shared start. ')
      assert.equal(await b.counter(), '0')
      // Let IndexedDB finish, then reload while still cut off: the edits come back from it.
      await a.page.evaluate(() => window.latticeDemo.client.whenPersisted())
      await a.page.reload()
      await a.ready()
      await waitFor(async () => (await a.text()) === 'Shared start. Written offline by A. ',
        'A\'s offline text to be restored after the reload', 20000, async () => `(text ${JSON.stringify(await a.text())}, counter ${await a.counter()}, pending ${await a.pending()}, status ${await a.status()})${a.explain()}`)
      assert.equal(await a.counter(), '4')
      assert.equal(await a.title(), 'Offline title')
      assert.ok((await a.pending()) > 0, 'the restored edits are still pending')
      assert.notEqual(await a.status(), 'synced')
      // Meanwhile B keeps editing.
      await b.typeAtEnd('B was here.')
      await b.applaud(1)

      a.unblock()
      // Both inserted at the same place concurrently: Yjs orders the two runs by client id.
      const wants = ['Shared start. Written offline by A. B was here.', 'Shared start. B was here.Written offline by A. ']
      for (const p of [a, b]) {
        await waitFor(async () => wants.includes(await p.text()) && (await p.counter()) === '5' &&
          (await p.title()) === 'Offline title', `${p.name} to converge after the reconnect`, 40000,
        async () => `(text ${JSON.stringify(await p.text())}, counter ${await p.counter()}, title ${JSON.stringify(await p.title())}, status ${await p.status()})${p.explain()}`)
      }
      assert.equal(await a.text(), await b.text())
      await waitFor(async () => (await a.pending()) === 0 && (await a.status()) === 'synced', 'A to be synced with nothing pending')
    } finally {
      await a.close()
      await b.close()
    }
  })

  test('without WebSockets the page syncs over SSE, then over long polling', async () => {
    const doc = `demo/${RUN}-fallback`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.blockWebSockets()
      await a.open(url(doc))
      await b.open(url(doc))
      await synced(b)
      await waitFor(async () => (await a.transport()) === 'sse' && (await a.status()) === 'synced',
        'A to sync over Server-Sent Events', 40000,
        async () => `(transport ${await a.transport()}, status ${await a.status()})${a.explain()}`)
      await a.typeAtEnd('A over SSE. ')
      await waitFor(async () => (await b.text()) === 'A over SSE. ', 'B (WebSocket) to see A\'s text', 20000, () => b.explain())
      await b.typeAtEnd('B over WebSocket. ')
      await b.applaud(2)
      await waitFor(async () => (await a.text()) === 'A over SSE. B over WebSocket. ' && (await a.counter()) === '2',
        'A to see B\'s edits over SSE', 20000, () => a.explain())
      await waitFor(async () => (await a.pending()) === 0, 'A\'s edits to be acknowledged over POST')

      // Event streams refused too (a buffering or strict proxy): long polling.
      a.blockedHttp = /^\/v1\/events\//
      await a.page.reload()
      await a.ready()
      await waitFor(async () => (await a.transport()) === 'long-poll' && (await a.status()) === 'synced',
        'A to sync over long polling', 60000,
        async () => `(transport ${await a.transport()}, status ${await a.status()})${a.explain()}`)
      // One after the other, so the text is known: B's edit reaches A's poll, then A's POST
      // reaches B.
      await b.typeAtEnd('B again. ')
      await waitFor(async () => (await a.text()).endsWith('B again. '), 'A (long polling) to see B\'s edit', 20000, () => a.explain())
      await a.typeAtEnd('A polls.')
      await a.applaud(1)
      const want = 'A over SSE. B over WebSocket. B again. A polls.'
      for (const p of [a, b]) {
        await waitFor(async () => (await p.text()) === want && (await p.counter()) === '3',
          `${p.name} to converge with A on long polling`, 30000,
          async () => `(text ${JSON.stringify(await p.text())}, counter ${await p.counter()})${p.explain()}`)
      }
      await waitFor(async () => (await a.pending()) === 0, 'A\'s edits to be acknowledged')
      // Presence both ways: A publishes a session, and polls the others'.
      await a.page.fill('[data-testid=my-name]', 'Polly')
      await a.page.keyboard.press('Enter')
      await b.page.locator('[data-testid=presence-peer]', { hasText: 'Polly' }).waitFor({ timeout: 20000 })
      await b.page.fill('[data-testid=my-name]', 'Webby')
      await b.page.keyboard.press('Enter')
      await a.page.locator('[data-testid=presence-peer]', { hasText: 'Webby' }).waitFor({ timeout: 20000 })
      await a.page.screenshot({ path: path.join(artifacts, 'demo-long-poll.png'), fullPage: true })
    } finally {
      await a.close()
      await b.close()
    }
  })

  test('presence and typing show on the other page', async () => {
    const doc = `demo/${RUN}-presence`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.open(url(doc))
      await b.open(url(doc))
      await synced(a)
      await synced(b)
      await a.page.fill('[data-testid=my-name]', 'Alice')
      await a.page.keyboard.press('Enter')
      const peer = b.page.locator('[data-testid=presence-peer]', { hasText: 'Alice' })
      await peer.waitFor({ timeout: 20000 })
      assert.equal(await peer.locator('[data-testid=typing]').count(), 0)
      await a.typeAtEnd('typing…')
      await peer.locator('[data-testid=typing]').waitFor({ timeout: 20000 })
      // A leaves: B's list forgets A.
      await a.close()
      await peer.waitFor({ state: 'detached', timeout: 40000 })
    } finally {
      await a.close()
      await b.close()
    }
  })
})
