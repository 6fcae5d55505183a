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
import * as Y from 'yjs'
import { LatticeServer, RUN, synced as yjsSynced, waitFor, yjsClient } from './support.mjs'

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
      await waitFor(async () => (await a.page.textContent('[data-testid=pending]')) === 'all saved', 'A to show every change saved')
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

  test('each page shows the other\'s caret and selection where they are; a closed page\'s caret goes', async () => {
    const doc = `demo/${RUN}-carets`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.open(url(doc))
      await b.open(url(doc))
      await synced(a)
      await synced(b)
      // Two tabs get distinct default names without anyone typing one.
      const names = await Promise.all([a, b].map((p) => p.page.inputValue('[data-testid=my-name]')))
      await waitFor(async () => {
        const [x, y] = await Promise.all([a, b].map((p) => p.page.inputValue('[data-testid=my-name]')))
        return x !== y
      }, `the two pages to have distinct default names (${names})`, 20000)
      await a.page.fill('[data-testid=my-name]', 'Alice')
      await a.page.keyboard.press('Enter')
      await b.page.fill('[data-testid=my-name]', 'Bob')
      await b.page.keyboard.press('Enter')
      await a.typeAtEnd('Hello carets and selections!')
      await waitFor(async () => (await b.text()) === 'Hello carets and selections!', 'B to see the text', 20000, () => b.explain())

      // A selects "carets" (6..12, head at 12); B puts its caret after "Hello" (5).
      const select = (p, anchor, head) => p.page.evaluate(([anchor, head]) => {
        const { view } = window.latticeDemo
        view.focus()
        view.dispatch({ selection: { anchor, head } })
      }, [anchor, head])
      await select(a, 6, 12)
      await select(b, 5, 5)

      // Where the remote caret of `who` is in `p`'s editor, and the text it shows as selected.
      const remote = (p, who) => p.page.evaluate((who) => {
        const { view } = window.latticeDemo
        const caret = [...document.querySelectorAll('.cm-ySelectionCaret')]
          .find((c) => c.textContent.includes(who))
        if (!caret) return null
        const selected = [...document.querySelectorAll('.cm-ySelection')].map((e) => e.textContent).join('')
        return { at: view.posAtDOM(caret), selected, colour: caret.style.backgroundColor }
      }, who)
      let onB
      await waitFor(async () => {
        onB = await remote(b, 'Alice')
        return onB !== null && onB.at === 12 && onB.selected === 'carets'
      }, 'B to show Alice\'s caret at 12 with "carets" selected', 20000, async () => `(got ${JSON.stringify(onB)})${b.explain()}`)
      let onA
      await waitFor(async () => {
        onA = await remote(a, 'Bob')
        return onA !== null && onA.at === 5 && onA.selected === ''
      }, 'A to show Bob\'s caret at 5', 20000, async () => `(got ${JSON.stringify(onA)})${a.explain()}`)
      assert.notEqual(onB.colour, '', 'the caret has the peer\'s colour')

      // A caret follows its text when the other side edits before it.
      await b.page.keyboard.type(',', { delay: 5 })
      await waitFor(async () => {
        onB = await remote(b, 'Alice')
        return onB !== null && onB.at === 13 && onB.selected === 'carets'
      }, 'Alice\'s caret on B to move with B\'s edit', 20000, async () => `(got ${JSON.stringify(onB)})`)
      // A stock y-websocket client on /yjs sees Alice's caret through awareness, and its own
      // caret and selection show in B's editor.
      const yjs = yjsClient(server, doc, { token })
      try {
        await yjsSynced(yjs)
        const body = yjs.ydoc.getText('body')
        const aliceOnYjs = () => [...yjs.provider.awareness.getStates().values()]
          .find((st) => st?.user?.name === 'Alice')
        let head = null
        await waitFor(() => {
          const cursor = aliceOnYjs()?.cursor
          head = cursor ? Y.createAbsolutePositionFromRelativePosition(cursor.head, yjs.ydoc) : null
          return head !== null && head.type === body && head.index === 13
        }, 'the Yjs client to see Alice\'s caret at 13', 20000, () => JSON.stringify(aliceOnYjs()))
        yjs.provider.awareness.setLocalState({
          user: { name: 'Yuki', color: '#12a594' },
          cursor: {
            anchor: Y.createRelativePositionFromTypeIndex(body, 0),
            head: Y.createRelativePositionFromTypeIndex(body, 5)
          }
        })
        let yuki
        await waitFor(async () => {
          yuki = await remote(b, 'Yuki')
          return yuki !== null && yuki.at === 5 && yuki.selected.includes('Hello')
        }, 'B to show the Yjs client\'s caret at 5 with "Hello" selected', 20000, async () => `(got ${JSON.stringify(yuki)})`)
        await b.page.screenshot({ path: path.join(artifacts, 'demo-carets.png'), fullPage: true })
      } finally {
        yjs.destroy()
      }
      assert.ok(existsSync(path.join(artifacts, 'demo-carets.png')))

      // A leaves: its caret goes from B's editor within the presence TTL (30 s by default).
      const closed = Date.now()
      await a.close()
      await waitFor(async () => (await remote(b, 'Alice')) === null, 'Alice\'s caret to leave B', 35000)
      const gone = Date.now() - closed
      assert.ok(gone < 30000, `Alice's caret stayed ${gone} ms after the page closed`)
    } finally {
      await a.close()
      await b.close()
    }
  })

  test('two Tiptap pages (stock @hocuspocus/provider on /hocuspocus) converge and show each other\'s caret; screenshotted', async () => {
    const doc = `demo/${RUN}-tiptap`
    const tiptapUrl = `http://${server.addr}/tiptap?doc=${encodeURIComponent(doc)}&token=${encodeURIComponent(token)}`
    const a = await new Browser('A').start()
    const b = await new Browser('B').start()
    try {
      await a.open(tiptapUrl)
      await b.open(tiptapUrl)
      for (const p of [a, b]) {
        await waitFor(async () => (await p.status()) === 'synced', `${p.name}'s Tiptap page to sync`, 30000, async () => `(status ${await p.status()})${p.explain()}`)
      }
      const html = (p) => p.page.evaluate(() => window.latticeTiptap.editor.getHTML())
      await a.page.fill('[data-testid=my-name]', 'Alice')
      await a.page.keyboard.press('Enter')
      await a.page.click('.tiptap')
      await a.page.keyboard.type('Hello from Tiptap', { delay: 5 })
      // Pressing Bold leaves the focus in the editor. A button that took it would get the keys
      // typed before Tiptap's focus() hands it back, an animation frame later (a lost space).
      await a.page.evaluate(() => {
        window.boldTookFocus = false
        document.querySelector('[data-testid=bold]').addEventListener('focus', () => { window.boldTookFocus = true })
      })
      await a.page.click('[data-testid=bold]')
      assert.equal(await a.page.evaluate(() => window.boldTookFocus), false, 'the Bold button took the focus from the editor')
      await a.page.waitForSelector('[data-testid=bold].on', { timeout: 5000 })
      await a.page.keyboard.type(' in bold', { delay: 5 })
      await waitFor(async () => (await html(b)).includes('<strong> in bold</strong>'), 'B to see A\'s rich text', 20000, async () => `(B ${await html(b)})${b.explain()}`)
      await b.page.click('.tiptap')
      await b.page.keyboard.press('Control+End')
      await b.page.keyboard.press('Enter')
      await b.page.keyboard.type('and a line from B', { delay: 5 })
      await waitFor(async () => (await html(a)) === (await html(b)) && (await html(a)).includes('and a line from B'),
        'the two pages to converge', 20000, async () => `(A ${await html(a)} B ${await html(b)})`)
      // Each page shows the other's caret, labelled with its name.
      await b.page.locator('.collaboration-carets__label', { hasText: 'Alice' }).waitFor({ timeout: 20000 })
      const bName = await b.page.inputValue('[data-testid=my-name]')
      await a.page.locator('.collaboration-carets__label', { hasText: bName }).waitFor({ timeout: 20000 })
      // Every change is stored: the server's JSON view of the document holds the text.
      await waitFor(async () => (await a.page.textContent('[data-testid=pending]')) === '0 unsaved', 'A\'s changes to be stored')
      const res = await fetch(`http://${server.addr}/v1/docs/${doc}`, { headers: { Authorization: `Bearer ${token}` } })
      assert.equal(res.status, 200)
      assert.match(JSON.stringify(await res.json()), /and a line from B/)
      await a.page.screenshot({ path: path.join(artifacts, 'tiptap.png'), fullPage: true })
      assert.ok(existsSync(path.join(artifacts, 'tiptap.png')))
    } finally {
      await a.close()
      await b.close()
    }
  })

  test('without a token, / and /tiptap answer a page that says how to get one; screenshotted', async () => {
    const b = await new Browser('anonymous').start()
    try {
      for (const page of ['/', '/tiptap']) {
        const res = await b.page.goto(`http://${server.addr}${page}`)
        assert.equal(res.status(), 401)
        assert.match(await b.page.textContent('h1'), /needs a token/)
      }
      await b.page.screenshot({ path: path.join(artifacts, 'token-needed.png'), fullPage: true })
    } finally {
      await b.close()
    }
  })
})
