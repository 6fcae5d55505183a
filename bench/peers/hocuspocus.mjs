// Hocuspocus (@hocuspocus/server) on 127.0.0.1:PORT (0 = any free port), documents in memory
// only: no extensions, no persistence, no authentication hook. Prints `ready PORT VERSIONS` once
// it listens; `cargo xtask bench` starts it (bench/src/target.rs).
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { Server } from '@hocuspocus/server'

const require = createRequire(import.meta.url)
const port = Number(process.argv[2] ?? 0)
const server = new Server({ port, address: '127.0.0.1', quiet: true, stopOnSignals: true })
await server.listen()
const versions = {
  // Its `exports` hide package.json from require, so read the file.
  '@hocuspocus/server': JSON.parse(readFileSync(new URL('./node_modules/@hocuspocus/server/package.json', import.meta.url))).version,
  yjs: require('yjs/package.json').version,
  node: process.version
}
console.log(`ready ${server.address.port} ${JSON.stringify(versions)}`)
