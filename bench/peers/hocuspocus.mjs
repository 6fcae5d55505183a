// Hocuspocus (@hocuspocus/server) on 127.0.0.1:PORT (0 = any free port), no authentication
// hook. Documents in memory only, unless LATTICE_BENCH_STORAGE names a folder: then its SQLite
// extension keeps them in FOLDER/hocuspocus.sqlite (the whole document, stored after changes
// with its default debounce, and on shutdown). Prints `ready PORT VERSIONS` once it listens and
// stores what is pending on SIGTERM (stopOnSignals); `cargo xtask bench` starts it
// (bench/src/target.rs).
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { Server } from '@hocuspocus/server'
import { SQLite } from '@hocuspocus/extension-sqlite'

const require = createRequire(import.meta.url)
const port = Number(process.argv[2] ?? 0)
const storage = process.env.LATTICE_BENCH_STORAGE
const extensions = storage ? [new SQLite({ database: join(storage, 'hocuspocus.sqlite') })] : []
const server = new Server({ port, address: '127.0.0.1', quiet: true, stopOnSignals: true, extensions })
await server.listen()
const versions = {
  // Its `exports` hide package.json from require, so read the file.
  '@hocuspocus/server': JSON.parse(readFileSync(new URL('./node_modules/@hocuspocus/server/package.json', import.meta.url))).version,
  yjs: require('yjs/package.json').version,
  node: process.version
}
console.log(`ready ${server.address.port} ${JSON.stringify(versions)}`)
