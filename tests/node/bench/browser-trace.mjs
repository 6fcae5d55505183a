// Benchmark (not a test): the time for the browser client to apply a real editing trace, in
// headless Chromium. Every patch is one local edit through the public API (`LatticeText.insert`
// / `delete`), as an editor would make them, with persistence off and no server: what is
// measured is the wasm document, the engine's delta per edit and the client's bookkeeping.
//
//   cargo xtask build-web
//   node tests/node/bench/browser-trace.mjs ../shared/traces/sequential_traces/ascii_only/automerge-paper.json.gz [runs]
//
// Traces count positions in Unicode code points; use the ascii_only variants, where code points
// and the UTF-16 units of the API coincide. The final text is checked against `endContent`.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { gunzipSync } from 'node:zlib'
import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const pkg = process.env.LATTICE_PKG_DIR ?? path.resolve(here, '../../../target/web/pkg')
const [tracePath, runsArg] = process.argv.slice(2)
if (!tracePath) {
  console.error('usage: browser-trace.mjs TRACE.json.gz [runs]')
  process.exit(2)
}
const runs = Number(runsArg ?? 5)
const trace = JSON.parse(gunzipSync(readFileSync(tracePath)).toString())
const patches = trace.txns.flatMap((t) => t.patches)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync']
})
const version = browser.version()
const page = await browser.newPage()
await page.route('http://bench.invalid/**', (route) => {
  const name = new URL(route.request().url()).pathname.slice(1) || 'index.html'
  if (name === 'index.html') return route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>bench</title>' })
  const type = name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript'
  return route.fulfill({ contentType: type, body: readFileSync(path.join(pkg, name)) })
})
await page.goto('http://bench.invalid/')
const times = []
for (let run = 0; run < runs; run++) {
  const result = await page.evaluate(async ({ patches, start }) => {
    const mod = await import('/lattice_client.js')
    await mod.default()
    const client = new mod.LatticeClient({ url: 'ws://127.0.0.1:9/v1/sync', dbName: null })
    const doc = await client.open(`bench-${Math.random()}`)
    const text = doc.text('body')
    if (start) text.insert(0, start)
    const t0 = performance.now()
    for (const [pos, del, ins] of patches) {
      if (del > 0) text.delete(pos, del)
      if (ins) text.insert(pos, ins)
    }
    const ms = performance.now() - t0
    const out = text.toString()
    const pending = doc.pendingCount
    doc.close()
    client.free()
    return { ms, out, pending }
  }, { patches, start: trace.startContent })
  if (result.out !== trace.endContent) throw new Error('the final text differs from endContent')
  times.push(result.ms)
  console.error(`run ${run + 1}: ${result.ms.toFixed(0)} ms (${result.pending} pending deltas)`)
}
times.sort((a, b) => a - b)
const median = times[Math.floor(times.length / 2)]
console.log(JSON.stringify({
  trace: path.basename(tracePath), patches: patches.length, chromium: version, runs,
  median_ms: Math.round(median), patches_per_s: Math.round(patches.length / (median / 1000)),
  min_ms: Math.round(times[0]), max_ms: Math.round(times.at(-1))
}))
await browser.close()
