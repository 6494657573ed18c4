// The JS side of the HTTP trustless-gateway checks (tests/test_gateway.py).
//
//   node gateway.mjs fetch GATEWAY_URL CID --out FILE
//     Helia's @helia/verified-fetch (over @helia/http, with GATEWAY_URL as its only
//     gateway and no delegated router) fetches ipfs://CID — block by block, each
//     verified against its CID — and writes the file's bytes to FILE. Prints JSON
//     {ok, status, content_type, size, sha256, error}.
//
//   node gateway.mjs serve PATH...
//     Imports each file or directory with ipfs-unixfs-importer (its defaults: CIDv1,
//     raw leaves, 256 KiB chunks, balanced layout) into a blockstore-core
//     MemoryBlockstore (Helia's blockstore) and serves those blocks as a minimal
//     trustless gateway on 127.0.0.1 (GET|HEAD /ipfs/{cid}?format=raw or
//     Accept: application/vnd.ipld.raw; 404 for a block it does not hold, 400 for a
//     bad CID or another format). Prints one JSON line {url, roots: {PATH: CID},
//     blocks} once listening; runs until SIGTERM.
//
// Network: only loopback. The fetch mode refuses any other address (a guard around
// globalThis.fetch), so nothing here can reach a public gateway or router.

import { createHash } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import http from 'node:http'
import path from 'node:path'

import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { CID } from 'multiformats/cid'

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]'])

function guardFetch () {
  const real = globalThis.fetch
  globalThis.fetch = (input, init) => {
    const url = new URL(typeof input === 'string' ? input : (input.url ?? String(input)))
    if (!LOOPBACK.has(url.hostname)) {
      return Promise.reject(new Error(`refused non-loopback request to ${url.origin}`))
    }
    return real(input, init)
  }
}

async function fetchMode (gateway, cid, out) {
  guardFetch()
  const { createVerifiedFetchWithHelia } = await import('@helia/verified-fetch')
  const { withHTTP } = await import('@helia/http')
  const { createHeliaLight } = await import('helia')
  // Helia's routing waits forever when it has only fallback routers (the recursive
  // gateway below is one): give it an ordinary router that knows no providers.
  const noProviders = { name: 'no-providers', async * findProviders () {} }
  const helia = withHTTP(createHeliaLight({ routers: [noProviders] }), {
    recursiveGateways: [gateway],
    delegatedRouters: [],
    allowInsecure: true,
    allowLocal: true
  })
  await helia.start()
  const result = { ok: false, status: null, content_type: null, size: 0, sha256: null, error: null }
  try {
    const vf = await createVerifiedFetchWithHelia(helia)
    const res = await vf(`ipfs://${cid}`, { signal: AbortSignal.timeout(120000) })
    result.status = res.status
    result.content_type = res.headers.get('content-type')
    const body = new Uint8Array(await res.arrayBuffer())
    await fsp.writeFile(out, body)
    result.size = body.length
    result.sha256 = createHash('sha256').update(body).digest('hex')
    result.ok = res.status === 200
    await vf.stop()
  } catch (e) {
    result.error = `${e.name}: ${e.message}`
  } finally {
    await helia.stop()
  }
  return result
}

async function * walk (base, rel = '') {
  const entries = (await fsp.readdir(path.join(base, rel), { withFileTypes: true }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  for (const e of entries) {
    const r = rel ? `${rel}/${e.name}` : e.name
    if (e.isDirectory()) yield * walk(base, r)
    else if (e.isFile()) yield { path: r, content: fs.createReadStream(path.join(base, r)) }
  }
}

async function serveMode (paths) {
  const blocks = new MemoryBlockstore()
  let count = 0
  const put = blocks.put.bind(blocks)
  blocks.put = (cid, bytes, o) => { count++; return put(cid, bytes, o) }
  const roots = {}
  for (const p of paths) {
    const dir = (await fsp.stat(p)).isDirectory()
    const source = dir ? walk(p) : [{ content: fs.createReadStream(p) }]
    let last = null
    for await (const entry of importer(source, blocks, { cidVersion: 1, rawLeaves: true, wrapWithDirectory: dir })) {
      last = entry
    }
    roots[p] = last.cid.toString()
  }
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x')
    const m = url.pathname.match(/^\/ipfs\/([^/]+)$/)
    const wantsRaw = url.searchParams.get('format') === 'raw' ||
      (url.searchParams.get('format') == null && (req.headers.accept ?? '').includes('application/vnd.ipld.raw'))
    if (m == null || !wantsRaw) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('only GET /ipfs/{cid}?format=raw\n')
      return
    }
    let cid
    try {
      cid = CID.parse(m[1])
    } catch (e) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end(`bad CID: ${e.message}\n`)
      return
    }
    let bytes = null
    try {
      if (await blocks.has(cid)) {
        const got = blocks.get(cid)
        if (got instanceof Uint8Array || typeof got?.then === 'function') {
          bytes = await got
        } else {
          const parts = []
          for await (const part of got) parts.push(part)
          bytes = Buffer.concat(parts)
        }
      }
    } catch (e) {
      bytes = null
    }
    if (bytes == null) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n')
      return
    }
    res.writeHead(200, {
      'content-type': 'application/vnd.ipld.raw',
      'content-length': bytes.length,
      'cache-control': 'public, max-age=29030400, immutable',
      etag: `"${cid.toString()}.raw"`
    })
    res.end(req.method === 'HEAD' ? undefined : bytes)
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}`, roots, blocks: count }) + '\n')
  process.on('SIGTERM', () => { server.close(); process.exit(0) })
}

const [mode, ...rest] = process.argv.slice(2)
if (mode === 'fetch') {
  const oi = rest.indexOf('--out')
  if (rest.length < 4 || oi < 0) {
    process.stderr.write('usage: node gateway.mjs fetch GATEWAY_URL CID --out FILE\n')
    process.exit(2)
  }
  const out = rest[oi + 1]
  const [gateway, cid] = rest.filter((_, i) => i !== oi && i !== oi + 1)
  const r = await fetchMode(gateway, cid, out)
  process.stdout.write(JSON.stringify(r) + '\n')
  process.exit(r.ok ? 0 : 1)
} else if (mode === 'serve' && rest.length > 0) {
  await serveMode(rest)
} else {
  process.stderr.write('usage: node gateway.mjs fetch GATEWAY_URL CID --out FILE | serve PATH...\n')
  process.exit(2)
}
