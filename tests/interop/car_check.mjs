#!/usr/bin/env node
// Independent check of a CAR v1 file with the JS IPFS stack (not tvcfs code).
//
//   node car_check.mjs FILE.car [--path a/b/file] [--out OUT] [--list] [--no-content]
//   node car_check.mjs --reimport PATH [--chunk-size N] [--max-children N] [--car-out OUT.car]
//                      [--shard-threshold BYTES] [--cid-version 0|1] [--dag-pb-leaves]
//   node car_check.mjs --murmur NAMES.json
//
// Check mode prints one JSON object on stdout (or, with --list, a plain
// "path<TAB>size<TAB>cid" listing) and exits 0 when `ok` is true, 1 when the
// CAR is invalid or does not follow docs/format.md, 2 on usage errors.
//
// What is checked:
//   * CAR header decodes (@ipld/car) and is the canonical dag-cbor
//     {"roots": [...], "version": 1};
//   * every block: CIDv1, sha2-256, codec raw / dag-pb / dag-cbor, bytes hash
//     to the CID; dag-pb and dag-cbor blocks decode strictly and re-encode to
//     the same bytes (canonical form: dag-pb Links before Data, links sorted,
//     dag-cbor map key order, no floats standing for ints, ...);
//   * the root: a dag-cbor commit is followed through its `tree` link; the
//     UnixFS tree is walked with ipfs-unixfs-exporter and every file is read in
//     full (size and sha256 reported);
//   * a strict structural pass (our own, since the exporter is lenient): file
//     links have an empty Name and a Tsize equal to the child's cumulative size,
//     blocksizes match the children, are unpacked, and sum with the node's
//     data to its stored filesize; directory links sorted and unique; a
//     single-leaf file is the raw leaf itself.
//
// Reimport mode imports a file or a directory with ipfs-unixfs-importer
// (CIDv1, raw leaves, balanced layout, fixed-size chunks of 1 MiB by default)
// and prints the CIDs it gets, to cross-check tvcfs CIDs. --shard-threshold sets
// shardSplitThresholdBytes with the `unixfs-v1-2025` profile's 'block-bytes'
// estimation (a directory whose node would be larger is HAMT-sharded);
// --cid-version 0 --dag-pb-leaves gives Kubo's default `ipfs add` layout (CIDv0,
// UnixFS File leaves wrapped in dag-pb).
//
// Murmur mode prints {name: hex} of the HAMT hash the importer uses for each name
// of a JSON list (murmur3-x64-128's first 64 bits, bytes as the importer orders them).

import { createHash } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { Readable } from 'node:stream'

import { CarBlockIterator, CarWriter } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import * as dagPb from '@ipld/dag-pb'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { UnixFS } from 'ipfs-unixfs'
import { exporter } from 'ipfs-unixfs-exporter'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { murmur3128 } from '@multiformats/murmur3'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'

const CODEC_NAMES = { [raw.code]: 'raw', [dagPb.code]: 'dag-pb', [dagCbor.code]: 'dag-cbor' }
const SHA2_256 = 0x12

// ---------------------------------------------------------------- arguments

function usage (msg) {
  if (msg) process.stderr.write(`car_check: ${msg}\n`)
  process.stderr.write(
    'usage: node car_check.mjs FILE.car [--path a/b/file] [--out OUT] [--list] [--no-content]\n' +
    '       node car_check.mjs --reimport PATH [--chunk-size N] [--max-children N] [--car-out OUT.car]\n')
  process.exit(2)
}

function parseArgs (argv) {
  const opts = { car: null, path: null, out: null, list: false, content: true, reimport: null, chunkSize: 1048576, maxChildren: 1024, carOut: null, shardThreshold: null, cidVersion: 1, rawLeaves: true, murmur: null }
  const takesValue = { '--path': 'path', '--out': 'out', '--reimport': 'reimport', '--chunk-size': 'chunkSize', '--max-children': 'maxChildren', '--car-out': 'carOut', '--shard-threshold': 'shardThreshold', '--cid-version': 'cidVersion', '--murmur': 'murmur' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a in takesValue) {
      if (i + 1 >= argv.length) usage(`${a} needs a value`)
      opts[takesValue[a]] = argv[++i]
    } else if (a === '--list') {
      opts.list = true
    } else if (a === '--dag-pb-leaves') {
      opts.rawLeaves = false
    } else if (a === '--no-content') {
      opts.content = false
    } else if (a === '-h' || a === '--help') {
      usage()
    } else if (a.startsWith('--')) {
      usage(`unknown option ${a}`)
    } else if (opts.car == null) {
      opts.car = a
    } else {
      usage(`unexpected argument ${a}`)
    }
  }
  opts.chunkSize = Number(opts.chunkSize)
  opts.maxChildren = Number(opts.maxChildren)
  opts.cidVersion = Number(opts.cidVersion)
  if (opts.shardThreshold != null) opts.shardThreshold = Number(opts.shardThreshold)
  if (opts.reimport == null && opts.murmur == null && opts.car == null) usage('no CAR file given')
  if (opts.out != null && opts.path == null) usage('--out needs --path')
  return opts
}

// ---------------------------------------------------------------- helpers

function toJSONable (v) {
  if (v == null) return v
  const cid = CID.asCID(v)
  if (cid) return { '/': cid.toString() }
  if (v instanceof Uint8Array) return { '/': { bytes: Buffer.from(v).toString('base64') } }
  if (typeof v === 'bigint') return Number(v)
  if (Array.isArray(v)) return v.map(toJSONable)
  if (typeof v === 'object') {
    const o = {}
    for (const [k, x] of Object.entries(v)) o[k] = toJSONable(x)
    return o
  }
  return v
}

function concat (chunks) {
  if (chunks.length === 1) return chunks[0]
  return Buffer.concat(chunks)
}

async function getBlock (bs, cid) {
  const chunks = []
  for await (const c of bs.get(cid)) chunks.push(c)
  return concat(chunks)
}

function equalBytes (a, b) {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0
}

function compareBytes (a, b) {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}

function readVarint (bytes, i) {
  let x = 0n; let shift = 0n
  for (;;) {
    if (i >= bytes.length) throw new Error('truncated varint')
    const b = bytes[i++]
    x |= BigInt(b & 0x7f) << shift
    if ((b & 0x80) === 0) return [x, i]
    shift += 7n
    if (shift > 63n) throw new Error('varint too long')
  }
}

// Raw scan of a UnixFS Data protobuf: what ipfs-unixfs does not expose (the
// stored filesize, which it recomputes, and packed vs unpacked blocksizes).
function scanUnixfsData (bytes) {
  const r = { type: null, dataLen: 0, filesize: null, blocksizes: [], packedBlocksizes: false, fields: [] }
  let i = 0
  while (i < bytes.length) {
    let key;[key, i] = readVarint(bytes, i)
    const field = Number(key >> 3n); const wire = Number(key & 7n)
    r.fields.push(field)
    if (wire === 0) {
      let v;[v, i] = readVarint(bytes, i)
      if (field === 1) r.type = Number(v)
      else if (field === 3) r.filesize = v
      else if (field === 4) r.blocksizes.push(v)
    } else if (wire === 2) {
      let len;[len, i] = readVarint(bytes, i)
      const end = i + Number(len)
      if (end > bytes.length) throw new Error('truncated length-delimited field')
      if (field === 2) r.dataLen = end - i
      if (field === 4) {
        r.packedBlocksizes = true
        let j = i
        while (j < end) { let v;[v, j] = readVarint(bytes, j); r.blocksizes.push(v) }
      }
      i = end
    } else if (wire === 5) {
      i += 4
    } else if (wire === 1) {
      i += 8
    } else {
      throw new Error(`unsupported wire type ${wire}`)
    }
  }
  return r
}

// ---------------------------------------------------------------- CAR loading

async function checkHeader (file, roots, errors) {
  // header = varint(len) || dag-cbor {"roots": [CID], "version": 1}
  const fh = await fsp.open(file, 'r')
  try {
    const head = Buffer.alloc(16)
    const { bytesRead } = await fh.read(head, 0, 16, 0)
    let [len, off] = readVarint(head.subarray(0, bytesRead), 0)
    len = Number(len)
    const hdr = Buffer.alloc(len)
    await fh.read(hdr, 0, len, off)
    const canonical = dagCbor.encode({ roots, version: 1 })
    if (!equalBytes(hdr, canonical)) {
      errors.push(`CAR header is not the canonical dag-cbor {"roots": [...], "version": 1} (got ${hdr.toString('hex')})`)
    }
    return { header_length: len, data_offset: off + len }
  } finally {
    await fh.close()
  }
}

async function loadCar (file, errors, warnings) {
  const iter = await CarBlockIterator.fromIterable(fs.createReadStream(file))
  const roots = await iter.getRoots()
  const blockstore = new MemoryBlockstore()
  const seen = new Set()
  const byMultihash = new Map() // base64(multihash) -> CID as written in the CAR
  const codecs = {}
  let blocks = 0; let duplicates = 0; let bytes = 0
  for await (const { cid, bytes: data } of iter) {
    blocks++
    bytes += data.length
    const key = cid.toString()
    const cname = CODEC_NAMES[cid.code] ?? `0x${cid.code.toString(16)}`
    codecs[cname] = (codecs[cname] ?? 0) + 1
    if (seen.has(key)) { duplicates++; continue }
    seen.add(key)
    const mh = Buffer.from(cid.multihash.bytes).toString('base64')
    if (byMultihash.has(mh)) warnings.push(`${key}: same multihash as ${byMultihash.get(mh)} (stored twice under different codecs)`)
    else byMultihash.set(mh, cid)
    if (cid.version !== 1) errors.push(`${key}: CID version ${cid.version}, expected 1`)
    if (!(cid.code in CODEC_NAMES)) errors.push(`${key}: unexpected codec ${cname}`)
    if (cid.multihash.code !== SHA2_256 || cid.multihash.size !== 32) {
      errors.push(`${key}: multihash 0x${cid.multihash.code.toString(16)}/${cid.multihash.size}, expected sha2-256/32`)
    } else {
      const digest = createHash('sha256').update(data).digest()
      if (!equalBytes(digest, cid.multihash.digest)) errors.push(`${key}: bytes do not hash to the CID`)
    }
    if (cid.code === dagPb.code) {
      try {
        const node = dagPb.decode(data)
        if (!equalBytes(dagPb.encode(node), data)) errors.push(`${key}: dag-pb block is not canonical (re-encoding differs: field order Links-before-Data, link field order or link sorting)`)
      } catch (e) { errors.push(`${key}: dag-pb decode failed: ${e.message}`) }
    } else if (cid.code === dagCbor.code) {
      try {
        const obj = dagCbor.decode(data)
        if (!equalBytes(dagCbor.encode(obj), data)) errors.push(`${key}: dag-cbor block is not canonical (re-encoding differs: key order, int/float width, ...)`)
      } catch (e) { errors.push(`${key}: dag-cbor decode failed: ${e.message}`) }
    }
    await blockstore.put(cid, data)
  }
  if (duplicates > 0) warnings.push(`${duplicates} duplicate block(s) in the CAR`)
  return { roots, blockstore, seen, byMultihash, blocks, unique: seen.size, duplicates, bytes, codecs }
}

// ---------------------------------------------------------------- strict DAG pass

class StrictChecker {
  constructor (bs, byMultihash, errors, warnings) {
    this.bs = bs; this.byMultihash = byMultihash; this.errors = errors; this.warnings = warnings
    this.visited = new Set()
    this.memo = new Map() // cid -> {tsize, size, kind}
  }

  // MemoryBlockstore (like Kubo's blockstore) is keyed by multihash, so a
  // block written under another codec would still be found: check the CID.
  async has (cid, where) {
    const stored = this.byMultihash.get(Buffer.from(cid.multihash.bytes).toString('base64'))
    if (stored == null) return false
    this.visited.add(stored.toString())
    if (!stored.equals(cid)) this.errors.push(`${where}: link to ${cid} but the CAR holds that block as ${stored} (codec/version differ)`)
    return true
  }

  // Returns {tsize, size, kind} for any node of a UnixFS DAG.
  async node (cid, where, top = false) {
    const key = cid.toString()
    if (this.memo.has(key)) return this.memo.get(key)
    this.visited.add(key)
    if (!(await this.has(cid, where))) {
      this.errors.push(`${where}: block ${key} missing from the CAR`)
      const r = { tsize: null, size: null, kind: 'missing' }
      this.memo.set(key, r)
      return r
    }
    const bytes = await getBlock(this.bs, cid)
    let r
    if (cid.code === raw.code) {
      r = { tsize: bytes.length, size: bytes.length, kind: 'raw' }
    } else if (cid.code === dagPb.code) {
      r = await this.pbNode(cid, bytes, where, top)
    } else {
      this.errors.push(`${where}: ${key} has codec ${CODEC_NAMES[cid.code] ?? cid.code} inside a UnixFS tree`)
      r = { tsize: bytes.length, size: null, kind: 'other' }
    }
    this.memo.set(key, r)
    return r
  }

  async pbNode (cid, bytes, where, top) {
    let node
    try { node = dagPb.decode(bytes) } catch (e) {
      this.errors.push(`${where}: ${cid}: dag-pb decode failed: ${e.message}`)
      return { tsize: bytes.length, size: null, kind: 'bad' }
    }
    if (node.Data == null) {
      this.errors.push(`${where}: ${cid}: dag-pb node without Data (not UnixFS)`)
      return { tsize: bytes.length, size: null, kind: 'bad' }
    }
    let u
    try { u = scanUnixfsData(node.Data) } catch (e) {
      this.errors.push(`${where}: ${cid}: UnixFS Data unreadable: ${e.message}`)
      return { tsize: bytes.length, size: null, kind: 'bad' }
    }
    try { UnixFS.unmarshal(node.Data) } catch (e) {
      this.errors.push(`${where}: ${cid}: ipfs-unixfs cannot unmarshal Data: ${e.message}`)
    }
    let childTsize = 0
    const linkTsizeSum = node.Links.reduce((a, l) => a + (l.Tsize ?? 0), 0)
    if (u.type === 2 /* File */ || u.type === 0 /* Raw */) {
      if (u.packedBlocksizes) this.errors.push(`${where}: ${cid}: UnixFS blocksizes are packed (must be one tag per entry; ipfs-unixfs misreads packed)`)
      if (node.Links.length !== u.blocksizes.length) this.errors.push(`${where}: ${cid}: ${node.Links.length} links but ${u.blocksizes.length} blocksizes`)
      const sum = u.blocksizes.reduce((a, b) => a + b, 0n) + BigInt(u.dataLen)
      if (u.filesize == null) this.errors.push(`${where}: ${cid}: UnixFS File without filesize`)
      else if (u.filesize !== sum) this.errors.push(`${where}: ${cid}: filesize ${u.filesize} != data ${u.dataLen} + sum(blocksizes) ${sum - BigInt(u.dataLen)}`)
      if (top && node.Links.length === 1 && u.dataLen === 0 && node.Links[0].Hash.code === raw.code) {
        this.errors.push(`${where}: ${cid}: single-leaf file should have the raw leaf itself as its root`)
      }
      for (let i = 0; i < node.Links.length; i++) {
        const l = node.Links[i]
        const lw = `${where}[link ${i}]`
        if (l.Name !== '') this.errors.push(`${lw}: file link Name ${l.Name === undefined ? 'absent' : JSON.stringify(l.Name)}, expected present and empty`)
        const c = await this.node(l.Hash, lw)
        if (c.kind === 'dir') this.errors.push(`${lw}: file links to a directory`)
        if (c.size != null && i < u.blocksizes.length && BigInt(c.size) !== u.blocksizes[i]) {
          this.errors.push(`${lw}: blocksizes[${i}] = ${u.blocksizes[i]} but child holds ${c.size} bytes`)
        }
        if (l.Tsize == null) this.errors.push(`${lw}: link without Tsize`)
        else if (c.tsize != null && l.Tsize !== c.tsize) this.errors.push(`${lw}: Tsize ${l.Tsize}, expected ${c.tsize} (block length + children's Tsize)`)
        childTsize += c.tsize ?? (l.Tsize ?? 0)
      }
      return { tsize: bytes.length + (childTsize || linkTsizeSum), size: Number(u.filesize ?? sum), kind: 'file' }
    }
    if (u.type === 1 /* Directory */) {
      const names = new Set()
      for (let i = 0; i < node.Links.length; i++) {
        const l = node.Links[i]
        const lw = `${where}/${l.Name}`
        if (l.Name == null || l.Name === '') this.errors.push(`${where}: directory link ${i} has no name`)
        else if (l.Name.includes('/')) this.errors.push(`${where}: directory entry name ${JSON.stringify(l.Name)} contains '/'`)
        if (names.has(l.Name)) this.errors.push(`${where}: duplicate directory entry ${JSON.stringify(l.Name)}`)
        names.add(l.Name)
        if (i > 0 && compareBytes(Buffer.from(node.Links[i - 1].Name ?? ''), Buffer.from(l.Name ?? '')) > 0) {
          this.errors.push(`${where}: directory links not sorted by name bytes at ${JSON.stringify(l.Name)}`)
        }
        const c = await this.node(l.Hash, lw, true)
        if (l.Tsize == null) this.errors.push(`${lw}: link without Tsize`)
        else if (c.tsize != null && l.Tsize !== c.tsize) this.errors.push(`${lw}: Tsize ${l.Tsize}, expected ${c.tsize} (block length + children's Tsize)`)
        childTsize += c.tsize ?? (l.Tsize ?? 0)
      }
      if (u.filesize != null) this.warnings.push(`${where}: ${cid}: directory has a filesize field`)
      return { tsize: bytes.length + childTsize, size: null, kind: 'dir' }
    }
    const tname = { 3: 'Metadata', 4: 'Symlink', 5: 'HAMTShard' }[u.type] ?? String(u.type)
    this.warnings.push(`${where}: ${cid}: UnixFS ${tname} node not checked strictly`)
    // HAMT shards etc.: still mark the sub-DAG as reachable
    for (const l of node.Links) { const c = await this.node(l.Hash, `${where}/${l.Name}`, true); childTsize += c.tsize ?? 0 }
    return { tsize: bytes.length + childTsize, size: null, kind: u.type === 5 ? 'dir' : 'other' }
  }
}

// ---------------------------------------------------------------- exporter walk

async function readAll (entry, sink) {
  const h = createHash('sha256')
  let n = 0
  for await (const chunk of entry.content()) {
    h.update(chunk)
    n += chunk.length
    if (sink) await new Promise((resolve, reject) => sink.write(chunk, (e) => e ? reject(e) : resolve()))
  }
  return { size: n, sha256: h.digest('hex') }
}

async function walkTree (treeCid, bs, opts, errors) {
  const files = []; const dirs = []
  async function visit (cid, rel) {
    let entry
    try { entry = await exporter(cid, bs) } catch (e) {
      errors.push(`exporter: ${rel || '/'} (${cid}): ${e.message}`)
      return
    }
    if (entry.type === 'directory') {
      dirs.push(rel)
      try {
        for await (const child of entry.entries()) {
          await visit(child.cid, rel ? `${rel}/${child.name}` : child.name)
        }
      } catch (e) { errors.push(`exporter: listing ${rel || '/'}: ${e.message}`) }
    } else if (entry.type === 'file' || entry.type === 'raw' || entry.type === 'identity') {
      const f = { path: rel, size: Number(entry.size), cid: entry.cid.toString(), type: entry.type }
      if (opts.content) {
        try {
          const r = await readAll(entry)
          f.sha256 = r.sha256
          if (r.size !== f.size) errors.push(`exporter: ${rel}: read ${r.size} bytes, size says ${f.size}`)
        } catch (e) { errors.push(`exporter: reading ${rel}: ${e.message}`) }
      }
      files.push(f)
    } else {
      errors.push(`exporter: ${rel} (${cid}) is a ${entry.type}, not a UnixFS file or directory`)
    }
  }
  await visit(treeCid, '')
  return { files, dirs }
}

// ---------------------------------------------------------------- modes

async function checkMode (opts) {
  const errors = []; const warnings = []
  const out = { car: path.resolve(opts.car), ok: false }
  let car
  try {
    car = await loadCar(opts.car, errors, warnings)
  } catch (e) {
    out.errors = [`cannot read CAR: ${e.message}`]
    return out
  }
  out.version = 1
  out.roots = car.roots.map(String)
  Object.assign(out, await checkHeader(opts.car, car.roots, errors).catch(e => { errors.push(`header: ${e.message}`); return {} }))
  out.blocks = car.blocks
  out.unique_blocks = car.unique
  out.block_bytes = car.bytes
  out.codecs = car.codecs
  if (car.roots.length !== 1) warnings.push(`${car.roots.length} roots; only the first is walked`)

  const bs = car.blockstore
  const strict = new StrictChecker(bs, car.byMultihash, errors, warnings)
  const rootsInfo = []
  for (const root of car.roots) {
    const info = { cid: root.toString(), codec: CODEC_NAMES[root.code] ?? root.code }
    rootsInfo.push(info)
    if (!(await bs.has(root))) { errors.push(`root ${root} is not in the CAR`); continue }
    let tree = root
    if (root.code === dagCbor.code) {
      strict.visited.add(root.toString())
      const commit = dagCbor.decode(await getBlock(bs, root))
      info.commit = toJSONable(commit)
      const t = commit && typeof commit === 'object' ? CID.asCID(commit.tree) : null
      if (t == null) { errors.push(`root ${root}: dag-cbor root without a CID link \`tree\``); continue }
      tree = t
      info.tree = t.toString()
      for (const p of Array.isArray(commit.parents) ? commit.parents : []) {
        const pc = CID.asCID(p)
        if (pc && car.seen.has(pc.toString())) strict.visited.add(pc.toString())
      }
    }
    if (rootsInfo.length > 1) continue
    await strict.node(tree, '', true)
    const walked = await walkTree(tree, bs, opts, errors)
    info.type = walked.dirs.length > 0 ? 'directory' : 'file'
    out.files = walked.files
    out.dirs = walked.dirs.filter(d => d !== '')
  }
  out.root = rootsInfo[0] ?? null
  if (rootsInfo.length > 1) out.other_roots = rootsInfo.slice(1)
  const unreachable = [...car.seen].filter(k => !strict.visited.has(k))
  out.unreachable_blocks = unreachable.length
  if (unreachable.length) warnings.push(`${unreachable.length} block(s) not reachable from the first root's tree (e.g. ${unreachable.slice(0, 3).join(', ')})`)

  if (opts.path != null && car.roots.length > 0) {
    const root = car.roots[0]
    const rel = opts.path.replace(/^\/+|\/+$/g, '')
    // through the commit with the exporter's own dag-cbor path walking
    const ipfsPath = root.code === dagCbor.code ? `${root}/tree/${rel}` : `${root}/${rel}`
    const exp = { path: rel, ipfs_path: `/ipfs/${ipfsPath}` }
    try {
      const entry = await exporter(ipfsPath, bs)
      exp.cid = entry.cid.toString()
      exp.type = entry.type
      if (entry.type !== 'file' && entry.type !== 'raw' && entry.type !== 'identity') throw new Error(`${rel} is a ${entry.type}`)
      let sink = null
      if (opts.out != null) { exp.out = path.resolve(opts.out); sink = fs.createWriteStream(opts.out) }
      try {
        Object.assign(exp, await readAll(entry, sink))
      } finally {
        if (sink) await new Promise((resolve, reject) => sink.end((e) => e ? reject(e) : resolve()))
      }
    } catch (e) {
      errors.push(`export ${rel}: ${e.message}`)
    }
    out.export = exp
  }
  out.warnings = warnings
  out.errors = errors
  out.ok = errors.length === 0
  return out
}

async function * walkLocal (base, rel = '') {
  const ents = await fsp.readdir(path.join(base, rel), { withFileTypes: true })
  ents.sort((a, b) => compareBytes(Buffer.from(a.name), Buffer.from(b.name)))
  for (const e of ents) {
    const r = rel ? `${rel}/${e.name}` : e.name
    if (e.isDirectory()) {
      yield { path: r }
      yield * walkLocal(base, r)
    } else if (e.isFile()) {
      yield { path: r, content: Readable.from(fs.createReadStream(path.join(base, r))) }
    }
  }
}

async function reimportMode (opts) {
  const st = await fsp.stat(opts.reimport)
  // MemoryBlockstore keys blocks by multihash and its getAll() hands back
  // every block under a *raw* CID: keep the CIDs the importer wrote.
  const blocks = new MemoryBlockstore()
  const written = new Map()
  const put = blocks.put.bind(blocks)
  blocks.put = (cid, bytes, o) => { written.set(cid.toString(), cid); return put(cid, bytes, o) }
  const options = {
    cidVersion: opts.cidVersion,
    rawLeaves: opts.rawLeaves,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: opts.chunkSize }),
    layout: balanced({ maxChildrenPerNode: opts.maxChildren }),
    wrapWithDirectory: st.isDirectory()
  }
  if (opts.shardThreshold != null) {
    options.shardSplitThresholdBytes = opts.shardThreshold
    options.shardSplitStrategy = 'block-bytes'
  }
  const source = st.isDirectory()
    ? walkLocal(opts.reimport)
    : [{ content: fs.createReadStream(opts.reimport) }]
  const entries = []
  for await (const r of importer(source, blocks, options)) {
    entries.push({ path: r.path ?? '', cid: r.cid.toString(), type: r.unixfs?.type ?? (r.cid.code === raw.code ? 'raw' : 'file'), cumulative_size: Number(r.size) })
  }
  const root = entries[entries.length - 1]
  const out = {
    reimport: path.resolve(opts.reimport),
    options: { cidVersion: opts.cidVersion, rawLeaves: opts.rawLeaves, chunkSize: opts.chunkSize, maxChildrenPerNode: opts.maxChildren, layout: 'balanced', shardSplitThresholdBytes: opts.shardThreshold },
    root: root.cid,
    blocks: written.size,
    entries: entries.filter(e => e !== root || !st.isDirectory())
  }
  if (opts.carOut != null) {
    const rootCid = CID.parse(root.cid)
    const { writer, out: carStream } = CarWriter.create([rootCid])
    const ws = fs.createWriteStream(opts.carOut)
    const piped = new Promise((resolve, reject) => { Readable.from(carStream).pipe(ws).on('finish', resolve).on('error', reject) })
    for (const cid of written.values()) {
      await writer.put({ cid, bytes: await getBlock(blocks, cid) })
    }
    await writer.close()
    await piped
    out.car_out = path.resolve(opts.carOut)
  }
  return out
}

// The hash function of ipfs-unixfs-importer's dir-sharded.js (hamtHashFn), verbatim.
async function murmurMode (opts) {
  const names = JSON.parse(await fsp.readFile(opts.murmur, 'utf8'))
  const out = {}
  for (const name of names) {
    const h = (await murmur3128.encode(new TextEncoder().encode(name))).slice(0, 8).reverse()
    out[name] = Buffer.from(h).toString('hex')
  }
  return out
}

// ---------------------------------------------------------------- main

const opts = parseArgs(process.argv.slice(2))
try {
  if (opts.murmur != null) {
    process.stdout.write(JSON.stringify(await murmurMode(opts)) + '\n')
  } else if (opts.reimport != null) {
    process.stdout.write(JSON.stringify(await reimportMode(opts), null, 2) + '\n')
  } else {
    const result = await checkMode(opts)
    if (opts.list) {
      for (const f of result.files ?? []) process.stdout.write(`${f.path}\t${f.size}\t${f.cid}\n`)
      for (const e of result.errors ?? []) process.stderr.write(`error: ${e}\n`)
    } else {
      process.stdout.write(JSON.stringify(result, null, 2) + '\n')
    }
    process.exitCode = result.ok ? 0 : 1
  }
} catch (e) {
  process.stderr.write(`car_check: ${e.stack ?? e}\n`)
  process.exitCode = 3
}
