// The reference y-websocket server (@y/websocket-server's `setupWSConnection`, exactly what its
// `y-websocket-server` binary runs) on 127.0.0.1:PORT (0 = any free port), documents in memory
// only (YPERSISTENCE unset). The document is the URL path. Prints `ready PORT VERSIONS` once it
// listens; `cargo xtask bench` starts it (bench/src/target.rs).
import http from 'node:http'
import { createRequire } from 'node:module'
import WebSocket from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

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
process.on('SIGTERM', () => process.exit(0))
