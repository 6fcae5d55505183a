// The reference y-websocket server (@y/websocket-server's `setupWSConnection`, exactly what its
// `y-websocket-server` binary runs) on 127.0.0.1:PORT (0 = any free port), documents in memory
// only, unless LATTICE_BENCH_STORAGE names a folder: then its LevelDB persistence (y-leveldb,
// what YPERSISTENCE turns on) keeps every update in FOLDER/leveldb. The document is the URL path. Prints `ready PORT VERSIONS` once it
// listens; `cargo xtask bench` starts it (bench/src/target.rs).
import http from 'node:http'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import WebSocket from 'ws'

// utils.js reads YPERSISTENCE when it is first imported.
if (process.env.LATTICE_BENCH_STORAGE) {
  process.env.YPERSISTENCE = join(process.env.LATTICE_BENCH_STORAGE, 'leveldb')
}
const { setupWSConnection, getPersistence } = await import('@y/websocket-server/utils')

const require = createRequire(import.meta.url)
const port = Number(process.argv[2] ?? 0)
const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('okay')
})
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})
server.listen(port, '127.0.0.1', () => {
  const versions = {
    '@y/websocket-server': require('@y/websocket-server/package.json').version,
    yjs: require('yjs/package.json').version,
    ws: require('ws/package.json').version,
    node: process.version
  }
  console.log(`ready ${server.address().port} ${JSON.stringify(versions)}`)
})
// On SIGTERM, let LevelDB finish the writes queued so far before exiting.
process.on('SIGTERM', async () => {
  server.close()
  const persistence = getPersistence()
  if (persistence) await persistence.provider.destroy()
  process.exit(0)
})
