// Shared helpers of the Node interop tests: a real `lattice` server in a child process, native
// Lattice clients (the `native_editor` binary), stock Yjs clients (`yjs` + `y-websocket`) and the
// HTTP transports (`fetch`, and `eventsource` for Server-Sent Events).
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { EventSource } from 'eventsource'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const here = path.dirname(fileURLToPath(import.meta.url))
/** Where `cargo build` put `lattice` and `native_editor` (`cargo xtask test` sets it). */
export const binDir = process.env.LATTICE_BIN_DIR ?? path.resolve(here, '../../target/debug')

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `pred` until it holds; fails with `what` and the last `explain()` after `ms`. */
export async function waitFor (pred, what, ms = 20000, explain = () => '') {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await pred()) return
    await sleep(25)
  }
  throw new Error(`timed out waiting for ${what} ${await explain()}`)
}

/**
 * The storage backends every interop test runs against. PostgreSQL comes from the set-up
 * (`cargo xtask test` exports its URL); without it the tests fail rather than skip.
 */
export const BACKENDS = ['sqlite', 'postgres']

/** A prefix that keeps this run's documents apart in a shared PostgreSQL database. */
export const RUN = `run-${process.pid}-${Date.now().toString(36)}`

/**
 * A lattice server on a fresh SQLite file, or on the test PostgreSQL database; `restart()`
 * keeps the data and the port.
 */
export class LatticeServer {
  constructor (extraArgs = [], backend = 'sqlite') {
    this.dir = mkdtempSync(path.join(tmpdir(), 'lattice-node-'))
    if (backend === 'postgres') {
      const url = process.env.LATTICE_TEST_POSTGRES_URL
      if (!url) throw new Error('LATTICE_TEST_POSTGRES_URL is not set: run the tests with `cargo xtask test`')
      this.db = url
    } else {
      this.db = `sqlite://${path.join(this.dir, 'lattice.db')}`
    }
    this.extraArgs = extraArgs
    // Access control stays on, as in production: every client below carries a token.
    this.secret = `node-tests:${'s3cret-'.repeat(6)}`
    this.addr = null
    this.child = null
    this.output = []
  }

  async start (bind = '127.0.0.1:0') {
    const child = spawn(path.join(binDir, 'lattice'), [
      'serve', '--bind', bind, '--database-url', this.db, ...this.extraArgs
    ], {
      env: { ...process.env, LATTICE_AUTH_SECRET: this.secret, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    this.child = child
    child.stderr.on('data', (d) => this.output.push(d.toString()))
    const lines = createInterface({ input: child.stdout })
    this.addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`lattice did not start: ${this.output.join('')}`)), 30000)
      child.on('exit', (code) => reject(new Error(`lattice exited with ${code}: ${this.output.join('')}`)))
      lines.on('line', (line) => {
        this.output.push(line + '\n')
        const m = line.match(/listening on http:\/\/(\S+)/)
        if (m) {
          clearTimeout(timer)
          resolve(m[1])
        }
      })
    })
    return this
  }

  /** A token minted by `lattice token` with this server's secret (the last line it prints). */
  token ({ doc = '*', scope = 'write', ttl = '1h', sub = 'node-tests' } = {}) {
    const out = execFileSync(path.join(binDir, 'lattice'), [
      'token', '--doc', doc, '--scope', scope, '--ttl', ttl, '--sub', sub
    ], { env: { ...process.env, LATTICE_AUTH_SECRET: this.secret }, stdio: ['ignore', 'pipe', 'ignore'] })
    return out.toString().trim().split('\n').pop()
  }

  get yjsUrl () { return `ws://${this.addr}/yjs` }
  get syncUrl () { return `ws://${this.addr}/v1/sync` }
  get httpUrl () { return `http://${this.addr}` }

  /** SIGTERM (graceful: flushes and acknowledges everything) and wait for the exit. */
  async stop () { await this.kill('SIGTERM') }

  /** Sends `signal` and waits for the exit; SIGKILL gives the server no chance to flush. */
  async kill (signal = 'SIGKILL') {
    // A child ended by a signal keeps `exitCode` null and sets `signalCode`.
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    this.child.kill(signal)
    await exited
  }

  /** Stops the server with `signal` and starts it again on the same data and port. */
  async restart (signal = 'SIGTERM') {
    const addr = this.addr
    await this.kill(signal)
    // The same port, so connected clients find the server again.
    for (let i = 0; ; i++) {
      try {
        await this.start(addr)
        return this
      } catch (e) {
        if (i >= 20) throw e
        await sleep(100)
      }
    }
  }

  async dispose () {
    await this.stop()
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/**
 * A stock Yjs client: a Y.Doc with a y-websocket provider on `doc`, passing `token` (a write
 * token for `doc` unless given) the way stock apps do, through `params`.
 */
export function yjsClient (server, doc, { token = server.token({ doc }), ...opts } = {}) {
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(server.yjsUrl, doc, ydoc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    maxBackoffTime: 300,
    params: token === null ? {} : { token },
    ...opts
  })
  const text = ydoc.getText('text')
  return {
    ydoc,
    provider,
    text,
    get content () { return text.toString() },
    destroy () { provider.destroy(); ydoc.destroy() }
  }
}

export async function synced (client, ms = 20000) {
  await waitFor(() => client.provider.synced, 'the Yjs client to sync', ms)
}

/** The native Lattice client, driven through `native_editor`'s line protocol. */
export class NativeEditor {
  constructor (server, doc, replica, token = server.token({ doc, sub: 'native' })) {
    this.child = spawn(path.join(binDir, 'native_editor'), [server.syncUrl, doc, String(replica), token], {
      env: { ...process.env, RUST_LOG: 'warn' },
      stdio: ['pipe', 'pipe', 'inherit']
    })
    this.waiting = []
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const next = this.waiting.shift()
      if (next) next(JSON.parse(line))
    })
  }

  cmd (line) {
    return new Promise((resolve) => {
      this.waiting.push(resolve)
      this.child.stdin.write(line + '\n')
    })
  }

  async insert (index, text) { return this.cmd(`insert ${index} ${JSON.stringify(text)}`) }
  async text () { return (await this.cmd('text')).text }
  async settle () {
    const r = await this.cmd('settle')
    if (!r.ok) throw new Error('the native client did not settle')
  }

  async presence (state) { return this.cmd(`presence ${JSON.stringify(state)}`) }
  async peers () { return (await this.cmd('peers')).peers }

  async quit () {
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    this.child.stdin.write('quit\n')
    await exited
  }
}

/**
 * A raw WebSocket on `/yjs/{doc}` that records every frame and the close; `token: null` sends
 * none.
 */
export async function rawYjs (server, doc, { token = server.token({ doc }) } = {}) {
  const query = token === null ? '' : `?token=${encodeURIComponent(token)}`
  const ws = new WebSocket(`${server.yjsUrl}/${doc}${query}`)
  ws.binaryType = 'nodebuffer'
  const frames = []
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  ws.on('message', (data) => frames.push(new Uint8Array(data)))
  await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject) })
  return { ws, frames, closed }
}

/** `Authorization` for `token`. */
export const bearer = (token) => ({ Authorization: `Bearer ${token}` })

/**
 * `POST /v1/updates/{doc}` with `bytes` (a raw Yjs update unless `headers` say otherwise):
 * the status, the response headers and the JSON body.
 */
export async function postUpdate (server, doc, token, bytes, headers = {}) {
  const res = await fetch(`${server.httpUrl}/v1/updates/${doc}`, {
    method: 'POST',
    headers: { ...bearer(token), 'Content-Type': 'application/octet-stream', ...headers },
    body: bytes
  })
  return { status: res.status, headers: res.headers, json: await res.json() }
}

/** The document's log head as the store has it (`GET /v1/admin/docs/{doc}`, admin token). */
export async function headSeq (server, doc) {
  const admin = server.token({ doc, scope: 'admin', sub: 'node-admin' })
  const res = await fetch(`${server.httpUrl}/v1/admin/docs/${doc}`, { headers: bearer(admin) })
  if (res.status === 404) return 0
  if (res.status !== 200) throw new Error(`admin summary: ${res.status} ${await res.text()}`)
  return (await res.json()).head_seq
}

/**
 * A Server-Sent Events reader on `/v1/events/{doc}` with the stock `eventsource` client, the
 * token in `?token=` as browsers pass it. `lastEventId` resumes after that seq with a
 * `Last-Event-ID` header, as a browser's `EventSource` does when it reconnects. Every event
 * lands in `events` as `{ type, id, data }`; `sync` and `delta` updates are applied to `ydoc`.
 * Nothing is recorded after `close()`.
 */
export function sseReader (server, doc, {
  token = server.token({ doc, scope: 'read', sub: 'sse-reader' }),
  lastEventId = null,
  ydoc = new Y.Doc()
} = {}) {
  const url = `${server.httpUrl}/v1/events/${doc}?token=${encodeURIComponent(token)}`
  const source = new EventSource(url, {
    // On its own reconnects EventSource sends the id it saw last; ours only starts it off.
    fetch: (input, init) => fetch(input, {
      ...init,
      headers: lastEventId === null ? init.headers : { 'Last-Event-ID': String(lastEventId), ...init.headers }
    })
  })
  const reader = {
    source,
    ydoc,
    events: [],
    errors: [],
    closed: false,
    get text () { return ydoc.getText('text').toString() },
    /** The seqs of the `delta` events, in arrival order. */
    get deltaSeqs () { return this.events.filter((e) => e.type === 'delta').map((e) => e.data.seq) },
    close () {
      this.closed = true
      source.close()
    }
  }
  for (const type of ['sync', 'delta', 'presence', 'close', 'message']) {
    source.addEventListener(type, (e) => {
      if (reader.closed) return
      const data = JSON.parse(e.data)
      reader.events.push({ type, id: e.lastEventId, data })
      // Every sync and delta carries a valid Yjs update (`AAA=` when it has no Yjs content).
      if (type === 'sync' || type === 'delta') {
        Y.applyUpdate(ydoc, Buffer.from(data.update, 'base64'), 'sse')
      }
    })
  }
  source.addEventListener('error', (e) => { reader.errors.push(`${e.code ?? ''} ${e.message ?? ''}`) })
  return reader
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort () {
  const srv = net.createServer()
  await new Promise((resolve, reject) => { srv.once('error', reject); srv.listen(0, '127.0.0.1', resolve) })
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

/** Whether Redis on `port` answers an inline `PING` with `+PONG`. */
function redisPing (port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    let reply = ''
    const done = (ok) => { socket.destroy(); resolve(ok) }
    socket.setTimeout(1000, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (d) => {
      reply += d.toString()
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
  })
}

/**
 * A `redis-server` child on a free port, without persistence: `LATTICE_TEST_REDIS_SERVER`
 * (`cargo xtask test` exports it), else `redis-server` from PATH. A missing binary fails the
 * test; it never skips. `restart()` keeps the port.
 */
export class RedisServer {
  constructor () {
    this.bin = process.env.LATTICE_TEST_REDIS_SERVER || 'redis-server'
    this.port = null
    this.child = null
    this.output = []
  }

  get url () { return `redis://127.0.0.1:${this.port}` }

  async start (port = null) {
    this.port = port ?? await freePort()
    const child = spawn(this.bin, [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child = child
    child.stdout.on('data', (d) => this.output.push(d.toString()))
    child.stderr.on('data', (d) => this.output.push(d.toString()))
    let failed = null
    child.once('error', (e) => {
      failed = e.code === 'ENOENT'
        ? new Error(`${this.bin} not found: install Redis (\`cargo xtask setup\`) or set LATTICE_TEST_REDIS_SERVER`)
        : e
    })
    child.once('exit', (code, signal) => {
      failed ??= new Error(`redis-server exited (${code ?? signal}): ${this.output.join('')}`)
    })
    const deadline = Date.now() + 15000
    while (!(await redisPing(this.port))) {
      if (failed) throw failed
      if (Date.now() > deadline) throw new Error(`redis-server did not answer PING: ${this.output.join('')}`)
      await sleep(50)
    }
    return this
  }

  /** Sends `signal` and waits for the exit. */
  async stop (signal = 'SIGTERM') {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    this.child.kill(signal)
    await exited
  }

  /** Stops Redis with `signal` (its data goes: nothing is persisted) and starts it on the same port. */
  async restart (signal = 'SIGTERM') {
    await this.stop(signal)
    for (let i = 0; ; i++) {
      try {
        return await this.start(this.port)
      } catch (e) {
        if (i >= 20) throw e
        await sleep(100)
      }
    }
  }
}

/** Runs one SQL statement with `psql` against `url`. */
function psql (url, sql) {
  try {
    execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', url, '-c', sql], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (e) {
    if (e.code === 'ENOENT') throw new Error('psql not found: install PostgreSQL (`cargo xtask setup`)')
    throw new Error(`psql: ${sql}: ${e.stderr?.toString() ?? e.message}`)
  }
}

/** `url` with its database name replaced by `db`. */
function withDatabase (url, db) {
  const [base, query] = url.split(/\?(.*)/s)
  const slash = base.indexOf('/', base.indexOf('://') + 3)
  const host = slash < 0 ? base : base.slice(0, slash)
  return `${host}/${db}${query ? `?${query}` : ''}`
}

let databases = 0

/**
 * A new, empty PostgreSQL database next to `LATTICE_TEST_POSTGRES_URL`'s (its role has
 * CREATEDB), as the Rust store tests make theirs: `{ url, name, drop() }`.
 */
export function freshPostgresDatabase () {
  const admin = process.env.LATTICE_TEST_POSTGRES_URL
  if (!admin) throw new Error('LATTICE_TEST_POSTGRES_URL is not set: run the tests with `cargo xtask test`')
  const name = `lattice_n_${process.pid}_${Date.now().toString(36)}_${databases++}`
  psql(admin, `CREATE DATABASE ${name}`)
  return {
    url: withDatabase(admin, name),
    name,
    drop () { psql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
  }
}

/**
 * The value of `name` on `server`'s `/metrics` (summed over its label sets), or `undefined`
 * when the server does not report it.
 */
export async function metric (server, name) {
  const res = await fetch(`${server.httpUrl}/metrics`)
  if (res.status !== 200) throw new Error(`/metrics: ${res.status}`)
  let sum
  for (const line of (await res.text()).split('\n')) {
    const m = line.match(/^(\w+)(\{[^}]*\})?\s+(\S+)/)
    if (m && m[1] === name) sum = (sum ?? 0) + Number(m[3])
  }
  return sum
}

/** Typing and convergence, shared by the interop tests: `converged` waits until every Yjs
 * client (and the native editor, if any) holds the same text, and returns it. */
/** Inserts `n` single characters at random positions, yielding between them. */
export async function typeInto (client, n, tag) {
  for (let i = 0; i < n; i++) {
    const at = Math.floor(Math.random() * (client.text.length + 1))
    client.text.insert(at, tag)
    if (i % 5 === 0) await sleep(1)
  }
}

export async function nativeType (native, n, tag) {
  for (let i = 0; i < n; i++) {
    const len = (await native.text()).length
    await native.insert(Math.floor(Math.random() * (len + 1)), tag)
  }
}

export function count (s, ch) { return [...s].filter((c) => c === ch).length }

export async function converged (yjsClients, native, what) {
  let last = ''
  await waitFor(async () => {
    const texts = yjsClients.map((c) => c.content)
    const nat = native ? await native.text() : texts[0]
    last = JSON.stringify({ yjs: texts, native: nat })
    return texts.every((t) => t === texts[0]) && nat === texts[0]
  }, what, 30000, () => last)
  return yjsClients[0].content
}

/** Three Yjs clients and a native editor each type 40 characters (`a`, `b`, `c`, `n`) at once;
 * checks that they converge on all 160 and returns the text. */
export async function typeFourWaysAndConverge (clients, native, what) {
  await Promise.all(clients.map((c) => synced(c)))
  await native.settle()
  await Promise.all([
    typeInto(clients[0], 40, 'a'),
    typeInto(clients[1], 40, 'b'),
    typeInto(clients[2], 40, 'c'),
    nativeType(native, 40, 'n')
  ])
  await native.settle()
  const text = await converged(clients, native, what)
  if (text.length !== 160) throw new Error(`${what}: ${text.length} characters, not 160: ${text}`)
  for (const ch of 'abcn') {
    if (count(text, ch) !== 40) throw new Error(`${what}: not 40 × ${ch} in ${text}`)
  }
  return text
}
