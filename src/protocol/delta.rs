//! Change detection: which entries differ between two trees, and which
//! bytes differ between two versions of a file.
//!
//! [`plan`] compares two [`Manifest`]s (the shadow copy of what is live, and
//! staging) and sorts every difference into a [`ChangeSet`]: removed and new
//! names, content changes (candidates by size and mtime, confirmed by
//! content hash), mode and mtime changes, symlinks, empty directories, and
//! moves (a file gone from one place and present, byte-identical, at a new
//! one). Hashes are asked for through a callback, only where needed, so this
//! module reads no files itself.
//!
//! [`compute`] produces a byte delta of a new version against an old one:
//! copy-from-base ranges and literal bytes. The CCM holds both versions, so
//! unlike rsync it needs no signature exchange: it indexes the old file's
//! blocks with a rolling hash, finds each match in the new file, and then
//! extends the match byte by byte in both directions. A one-byte edit costs
//! one byte of literal rather than a whole block. [`apply`] streams a delta
//! against a base file into a new file with bounded memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};

use bytes::BufMut;
use thiserror::Error;

use super::assignment::{FileMeta, Mtime};
use super::crypto::Digest;
use super::paths::SitePath;

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// Mode and mtime.
        meta: FileMeta,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as stored.
        target: String,
    },
}

/// A tree: every entry below a root, by path.
pub type Manifest = BTreeMap<SitePath, EntryKind>;

/// Which tree a hash is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The old tree (the shadow copy).
    Old,
    /// The new tree (staging).
    New,
}

/// A file that moved without changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    /// Where it was.
    pub from: SitePath,
    /// Where it is now.
    pub to: SitePath,
    /// Its content hash.
    pub sha256: Digest,
}

/// Everything that differs between two trees, in the groups an assignment
/// executes them in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Entries to delete, outermost only (a removed directory covers its
    /// contents), including entries whose type changed and the old places
    /// of moved files.
    pub removed: Vec<SitePath>,
    /// New directories with their modes, parents first.
    pub dirs: Vec<(SitePath, u32)>,
    /// Files that moved.
    pub renamed: Vec<Renamed>,
    /// New files.
    pub added: Vec<SitePath>,
    /// Files whose content changed.
    pub changed: Vec<SitePath>,
    /// New or changed symlinks with their targets.
    pub symlinks: Vec<(SitePath, String)>,
    /// Entries whose mode or (files only) mtime changed but not their content.
    pub attrs: Vec<(SitePath, u32, Option<Mtime>)>,
}

impl ChangeSet {
    /// True when the trees are the same.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.dirs.is_empty()
            && self.renamed.is_empty()
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.symlinks.is_empty()
            && self.attrs.is_empty()
    }
}

fn same_kind(a: &EntryKind, b: &EntryKind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Compares `old` with `new`. `hash` returns the SHA-256 of a file on one
/// side; it is called only to confirm a change whose size is unchanged but
/// whose mtime differs, and to match moved files of equal size.
pub fn plan<E>(
    old: &Manifest,
    new: &Manifest,
    mut hash: impl FnMut(Side, &SitePath) -> Result<Digest, E>,
) -> Result<ChangeSet, E> {
    let mut cs = ChangeSet::default();
    let mut gone: Vec<&SitePath> = Vec::new();
    for (path, o) in old {
        let Some(n) = new.get(path).filter(|n| same_kind(o, n)) else {
            gone.push(path);
            continue;
        };
        match (o, n) {
            (EntryKind::File { size: os, meta: om }, EntryKind::File { size: ns, meta: nm }) => {
                if os != ns {
                    cs.changed.push(path.clone());
                } else if om.mtime == nm.mtime {
                    if om.mode != nm.mode {
                        cs.attrs.push((path.clone(), nm.mode, None));
                    }
                } else if hash(Side::Old, path)? == hash(Side::New, path)? {
                    cs.attrs.push((path.clone(), nm.mode, Some(nm.mtime)));
                } else {
                    cs.changed.push(path.clone());
                }
            }
            (EntryKind::Dir { mode: om }, EntryKind::Dir { mode: nm }) if om != nm => {
                cs.attrs.push((path.clone(), *nm, None));
            }
            (EntryKind::Symlink { target: ot }, EntryKind::Symlink { target: nt }) if ot != nt => {
                cs.symlinks.push((path.clone(), nt.clone()));
            }
            _ => {}
        }
    }

    // Outermost removals only.
    let gone_set: HashSet<&str> = gone.iter().map(|p| p.as_str()).collect();
    cs.removed =
        gone.iter().filter(|p| !p.ancestors().any(|a| gone_set.contains(a))).map(|p| (*p).clone()).collect();

    // Files that vanished, by size, as candidate sources of moves.
    let mut by_size: HashMap<u64, Vec<(&SitePath, Option<Digest>)>> = HashMap::new();
    for p in &gone {
        if let Some(EntryKind::File { size, .. }) = old.get(*p) {
            if *size > 0 {
                by_size.entry(*size).or_default().push((p, None));
            }
        }
    }

    for (path, n) in new {
        if old.get(path).is_some_and(|o| same_kind(o, n)) {
            continue;
        }
        match n {
            EntryKind::Dir { mode } => cs.dirs.push((path.clone(), *mode)),
            EntryKind::Symlink { target } => cs.symlinks.push((path.clone(), target.clone())),
            EntryKind::File { size, meta } => {
                let mut moved = None;
                if let Some(candidates) = by_size.get_mut(size) {
                    let digest = hash(Side::New, path)?;
                    for (i, (from, cached)) in candidates.iter_mut().enumerate() {
                        let d = match cached {
                            Some(d) => *d,
                            None => *cached.insert(hash(Side::Old, from)?),
                        };
                        if d == digest {
                            moved = Some((i, digest));
                            break;
                        }
                    }
                    if let Some((i, sha256)) = moved {
                        let (from, _) = candidates.swap_remove(i);
                        cs.renamed.push(Renamed { from: from.clone(), to: path.clone(), sha256 });
                        let EntryKind::File { meta: om, .. } = &old[from] else { unreachable!("files only") };
                        if om != meta {
                            cs.attrs.push((path.clone(), meta.mode, Some(meta.mtime)));
                        }
                    }
                }
                if moved.is_none() {
                    cs.added.push(path.clone());
                }
            }
        }
    }
    Ok(cs)
}

/// One step of a byte delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOp<'a> {
    /// Copy `len` bytes from the base at `offset`.
    Copy {
        /// Offset in the base.
        offset: u64,
        /// Bytes to copy.
        len: u64,
    },
    /// Write these bytes.
    Literal(&'a [u8]),
}

/// Longest literal op encoded; longer literals are split.
pub const MAX_LITERAL: usize = 1 << 20;
const OP_COPY: u8 = 1;
const OP_LITERAL: u8 = 2;

/// Block size of the whole-file index: small enough to find matches between
/// nearby edits, large enough that matches are meaningful and the index small.
fn block_size(len: usize) -> usize {
    match len {
        0..=0xFFFF => 16,
        0x1_0000..=0xF_FFFF => 24,
        _ => 32,
    }
}

/// A match at the expected place is taken when it is at least this long.
const MIN_HINT_MATCH: usize = 8;
/// After an edit, the old file is searched this far on either side of the
/// expected place (a small window first, most edits being small) before the
/// whole-file index is built.
const LOCAL_WINDOWS: [usize; 2] = [256, 2048];
/// Length of the keys of the local search.
const LOCAL_KEY: usize = 12;

const fn byte_table() -> [u64; 256] {
    // splitmix64 from a fixed seed: a well-spread value per byte.
    let mut t = [0u64; 256];
    let mut x: u64 = 0x5EED_C0DE_D17A_1234;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

static TABLE: [u64; 256] = byte_table();
const PRIME: u64 = 0x0000_0100_0000_01B3;

fn hash_block(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |h, &x| h.wrapping_mul(PRIME).wrapping_add(TABLE[x as usize]))
}

/// A Rabin–Karp hash of a `len`-byte window that slides one byte at a time.
struct Rolling {
    hash: u64,
    /// PRIME^(len-1), to take the outgoing byte out.
    top: u64,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let top = (1..window.len()).fold(1u64, |p, _| p.wrapping_mul(PRIME));
        Rolling { hash: hash_block(window), top }
    }

    fn roll(&mut self, out: u8, inp: u8) {
        self.hash = self
            .hash
            .wrapping_sub(TABLE[out as usize].wrapping_mul(self.top))
            .wrapping_mul(PRIME)
            .wrapping_add(TABLE[inp as usize]);
    }
}

/// Open-addressing map from a window hash to the first position with that
/// hash. Entries carry the generation they were written in, so clearing is
/// a counter increment, not a sweep of the table.
struct PosIndex {
    slots: Vec<(u64, u32, u32)>,
    shift: u32,
    generation: u32,
}

impl PosIndex {
    fn with_capacity(entries: usize) -> Self {
        let bits = (entries.max(1) * 2).next_power_of_two().trailing_zeros().max(4);
        PosIndex { slots: vec![(0, 0, 0); 1 << bits], shift: 64 - bits, generation: 1 }
    }

    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.iter_mut().for_each(|s| *s = (0, 0, 0));
            self.generation = 1;
        }
    }

    fn slot(&self, h: u64) -> usize {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn insert(&mut self, h: u64, pos: usize) {
        let mask = self.slots.len() - 1;
        let mut i = self.slot(h);
        loop {
            match self.slots[i] {
                (_, _, g) if g != self.generation => {
                    self.slots[i] = (h, pos as u32, self.generation);
                    return;
                }
                (existing, _, _) if existing == h => return,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get(&self, h: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.slot(h);
        loop {
            match self.slots[i] {
                (_, _, g) if g != self.generation => return None,
                (existing, p, _) if existing == h => return Some(p as usize),
                _ => i = (i + 1) & mask,
            }
        }
    }
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default())
            ^ u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Finds the delta of `new` against `old`, walking `new` once. At every
/// point it first tries the place in `old` where the last match would
/// continue; after an edit it searches a window around that place; only when
/// that fails (content moved far, or a long insertion) does it build an
/// index of the whole old file, once.
struct Matcher<'o, 'n> {
    old: &'o [u8],
    new: &'n [u8],
    ops: Vec<DeltaOp<'n>>,
    lit_start: usize,
    local: PosIndex,
    global: Option<(PosIndex, usize)>,
}

impl<'n> Matcher<'_, 'n> {
    /// Extends the match at (`j` in new, `x` in old) both ways, emits it, and
    /// returns where it ends in new and old.
    fn take(&mut self, j: usize, x: usize) -> (usize, usize) {
        let mut back = 0;
        while j - back > self.lit_start && x > back && self.new[j - back - 1] == self.old[x - back - 1] {
            back += 1;
        }
        let fwd = common_prefix(&self.new[j..], &self.old[x..]);
        let (s, os) = (j - back, x - back);
        if s > self.lit_start {
            self.ops.push(DeltaOp::Literal(&self.new[self.lit_start..s]));
        }
        self.ops.push(DeltaOp::Copy { offset: os as u64, len: (back + fwd) as u64 });
        self.lit_start = j + fwd;
        (j + fwd, x + fwd)
    }

    /// The first position from `i` on (within a window) whose key occurs
    /// near `hint` in old.
    fn local_search(&mut self, i: usize, hint: usize) -> Option<(usize, usize)> {
        LOCAL_WINDOWS.iter().find_map(|&w| self.search_window(i, hint, w))
    }

    fn search_window(&mut self, i: usize, hint: usize, window: usize) -> Option<(usize, usize)> {
        let (old, new) = (self.old, self.new);
        let lo = hint.saturating_sub(window).min(old.len());
        let hi = (hint + window).min(old.len());
        if hi < lo + LOCAL_KEY || new.len() < i + LOCAL_KEY {
            return None;
        }
        self.local.clear();
        let mut r = Rolling::new(&old[lo..lo + LOCAL_KEY]);
        for x in lo..=hi - LOCAL_KEY {
            if x > lo {
                r.roll(old[x - 1], old[x + LOCAL_KEY - 1]);
            }
            self.local.insert(r.hash, x);
        }
        let end = (i + window).min(new.len() - LOCAL_KEY);
        let mut r = Rolling::new(&new[i..i + LOCAL_KEY]);
        for j in i..=end {
            if j > i {
                r.roll(new[j - 1], new[j + LOCAL_KEY - 1]);
            }
            if let Some(x) = self.local.get(r.hash) {
                if old[x..x + LOCAL_KEY] == new[j..j + LOCAL_KEY] {
                    return Some((j, x));
                }
            }
        }
        None
    }

    /// The first position from `i` on whose block occurs anywhere in old.
    fn global_search(&mut self, i: usize) -> Option<(usize, usize)> {
        let (old, new) = (self.old, self.new);
        let (index, block) = self.global.get_or_insert_with(|| {
            let block = block_size(old.len());
            let mut index = PosIndex::with_capacity(old.len() / block);
            for (k, chunk) in old.chunks_exact(block).enumerate() {
                index.insert(hash_block(chunk), k * block);
            }
            (index, block)
        });
        let block = *block;
        if new.len() < i + block || old.len() < block {
            return None;
        }
        let mut r = Rolling::new(&new[i..i + block]);
        for j in i..=new.len() - block {
            if j > i {
                r.roll(new[j - 1], new[j + block - 1]);
            }
            if let Some(x) = index.get(r.hash) {
                if old[x..x + block] == new[j..j + block] {
                    return Some((j, x));
                }
            }
        }
        None
    }
}

/// The delta that turns `old` into `new`. Literal ops borrow from `new`.
pub fn compute<'a>(old: &[u8], new: &'a [u8]) -> Vec<DeltaOp<'a>> {
    let mut m = Matcher {
        old,
        new,
        ops: Vec::new(),
        lit_start: 0,
        local: PosIndex::with_capacity(2 * LOCAL_WINDOWS[1]),
        global: None,
    };
    let (mut i, mut hint) = (0usize, 0usize);
    // Offsets are stored as u32 in the indexes.
    let searchable = old.len() >= LOCAL_KEY && old.len() < u32::MAX as usize;
    while i < new.len() && searchable {
        let run = common_prefix(&new[i..], old.get(hint..).unwrap_or_default());
        let found = if run >= MIN_HINT_MATCH || (run > 0 && i + run == new.len()) {
            Some((i, hint))
        } else if let Some(at) = m.local_search(i, hint) {
            Some(at)
        } else {
            m.global_search(i)
        };
        match found {
            Some((j, x)) => (i, hint) = m.take(j, x),
            None => break,
        }
    }
    if m.lit_start < new.len() {
        m.ops.push(DeltaOp::Literal(&new[m.lit_start..]));
    }
    m.ops
}

/// Serialises ops: `1, offset u64, len u64` for a copy; `2, len u32, bytes`
/// for a literal (split at [`MAX_LITERAL`]).
pub fn encode(ops: &[DeltaOp<'_>], out: &mut Vec<u8>) {
    for op in ops {
        match op {
            DeltaOp::Copy { offset, len } => {
                out.put_u8(OP_COPY);
                out.put_u64_le(*offset);
                out.put_u64_le(*len);
            }
            DeltaOp::Literal(bytes) => {
                for piece in bytes.chunks(MAX_LITERAL) {
                    out.put_u8(OP_LITERAL);
                    // Pieces are at most MAX_LITERAL bytes.
                    out.put_u32_le(piece.len() as u32);
                    out.put_slice(piece);
                }
            }
        }
    }
}

/// Bytes that [`encode`] would write.
pub fn encoded_len(ops: &[DeltaOp<'_>]) -> usize {
    ops.iter()
        .map(|op| match op {
            DeltaOp::Copy { .. } => 17,
            DeltaOp::Literal(b) => b.len() + 5 * b.len().div_ceil(MAX_LITERAL).max(1),
        })
        .sum()
}

/// Bytes of literal data in `ops`.
pub fn literal_len(ops: &[DeltaOp<'_>]) -> u64 {
    ops.iter().map(|op| if let DeltaOp::Literal(b) = op { b.len() as u64 } else { 0 }).sum()
}

/// A delta that cannot be applied.
#[derive(Debug, Error)]
pub enum DeltaError {
    /// Reading the ops or the base, or writing the result, failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The ops are malformed or do not fit the base or the declared size.
    #[error("bad delta: {0}")]
    Invalid(String),
}

fn bad(msg: impl Into<String>) -> DeltaError {
    DeltaError::Invalid(msg.into())
}

/// Applies the serialised delta in `ops` to `base` (of `base_len` bytes),
/// writing exactly `size` bytes to `out`. Every length is checked against
/// the base and the declared size before any byte is copied.
pub fn apply(
    ops: &mut impl Read,
    base: &mut (impl Read + Seek),
    base_len: u64,
    out: &mut impl Write,
    size: u64,
) -> Result<(), DeltaError> {
    let mut produced = 0u64;
    loop {
        let mut tag = [0u8; 1];
        if ops.read(&mut tag)? == 0 {
            break;
        }
        let (src, len): (&mut dyn Read, u64) = match tag[0] {
            OP_COPY => {
                let mut f = [0u8; 16];
                ops.read_exact(&mut f)?;
                let offset = u64::from_le_bytes(f[..8].try_into().unwrap_or_default());
                let len = u64::from_le_bytes(f[8..].try_into().unwrap_or_default());
                if offset.checked_add(len).is_none_or(|end| end > base_len) {
                    return Err(bad(format!(
                        "copy of {len} bytes at {offset} is outside a base of {base_len}"
                    )));
                }
                base.seek(SeekFrom::Start(offset))?;
                (base as &mut dyn Read, len)
            }
            OP_LITERAL => {
                let mut f = [0u8; 4];
                ops.read_exact(&mut f)?;
                let len = u32::from_le_bytes(f);
                if len as usize > MAX_LITERAL {
                    return Err(bad(format!("literal of {len} bytes is over the limit")));
                }
                (ops as &mut dyn Read, u64::from(len))
            }
            other => return Err(bad(format!("unknown op {other}"))),
        };
        if produced.checked_add(len).is_none_or(|n| n > size) {
            return Err(bad(format!("result exceeds its declared size of {size} bytes")));
        }
        let copied = io::copy(&mut src.take(len), out)?;
        if copied != len {
            return Err(bad(format!("op ended after {copied} of {len} bytes")));
        }
        produced += len;
    }
    if produced != size {
        return Err(bad(format!("result is {produced} bytes, declared {size}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn roundtrip(old: &[u8], new: &[u8]) -> Vec<u8> {
        let ops = compute(old, new);
        let mut enc = Vec::new();
        encode(&ops, &mut enc);
        assert_eq!(enc.len(), encoded_len(&ops));
        let mut out = Vec::new();
        apply(&mut &enc[..], &mut Cursor::new(old), old.len() as u64, &mut out, new.len() as u64).unwrap();
        out
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_one_byte_edit_costs_about_one_byte() {
        let old = pseudo_random(1 << 20, 1);
        let mut new = old.clone();
        new[500_000] ^= 0xff;
        new.splice(700_000..700_000, b"inserted".iter().copied());
        new.drain(100_000..100_010);
        let ops = compute(&old, &new);
        assert!(literal_len(&ops) <= 1 + 8, "{} literal bytes", literal_len(&ops));
        assert_eq!(roundtrip(&old, &new), new);
    }

    #[test]
    fn unrelated_content_is_all_literal_and_small_inputs_work() {
        let old = pseudo_random(10_000, 1);
        let new = pseudo_random(10_000, 2);
        assert_eq!(literal_len(&compute(&old, &new)), 10_000);
        assert_eq!(roundtrip(&old, &new), new);
        assert_eq!(roundtrip(b"", b"abc"), b"abc");
        assert_eq!(roundtrip(b"abc", b""), b"");
        assert!(compute(b"abc", b"").is_empty());
    }

    #[test]
    fn moved_blocks_are_copied() {
        let a = pseudo_random(50_000, 3);
        let b = pseudo_random(50_000, 4);
        let old = [a.clone(), b.clone()].concat();
        let new = [b, a].concat();
        let ops = compute(&old, &new);
        assert_eq!(literal_len(&ops), 0);
        assert_eq!(roundtrip(&old, &new), new);
    }

    #[test]
    fn apply_rejects_out_of_bounds_and_wrong_sizes() {
        let base = b"0123456789";
        let mut enc = Vec::new();
        encode(&[DeltaOp::Copy { offset: 5, len: 6 }], &mut enc);
        let err = apply(&mut &enc[..], &mut Cursor::new(base), 10, &mut Vec::new(), 6).unwrap_err();
        assert!(err.to_string().contains("outside a base"), "{err}");
        let mut enc = Vec::new();
        encode(&[DeltaOp::Literal(b"abc")], &mut enc);
        assert!(apply(&mut &enc[..], &mut Cursor::new(base), 10, &mut Vec::new(), 2).is_err());
        assert!(apply(&mut &enc[..], &mut Cursor::new(base), 10, &mut Vec::new(), 4).is_err());
        assert!(apply(&mut &enc[..enc.len() - 1], &mut Cursor::new(base), 10, &mut Vec::new(), 3).is_err());
        assert!(apply(&mut &[9u8][..], &mut Cursor::new(base), 10, &mut Vec::new(), 0).is_err());
    }

    fn file(size: u64, mtime: i64, mode: u32) -> EntryKind {
        EntryKind::File { size, meta: FileMeta { mode, mtime: Mtime { secs: mtime, nanos: 0 } } }
    }

    fn manifest(entries: &[(&str, EntryKind)]) -> Manifest {
        entries.iter().map(|(p, e)| (SitePath::new(p).unwrap(), e.clone())).collect()
    }

    fn paths(v: &[SitePath]) -> Vec<&str> {
        v.iter().map(|p| p.as_str()).collect()
    }

    #[test]
    fn plan_sorts_every_kind_of_change() {
        let dir = EntryKind::Dir { mode: 0o755 };
        let old = manifest(&[
            ("same", file(3, 1, 0o644)),
            ("grown", file(3, 1, 0o644)),
            ("touched", file(3, 1, 0o644)),
            ("edited", file(3, 1, 0o644)),
            ("chmod", file(3, 1, 0o644)),
            ("gone", dir.clone()),
            ("gone/x", file(1, 1, 0o644)),
            ("moved", file(5, 1, 0o644)),
            ("link", EntryKind::Symlink { target: "same".into() }),
            ("file2dir", file(1, 1, 0o644)),
            ("d", EntryKind::Dir { mode: 0o700 }),
        ]);
        let new = manifest(&[
            ("same", file(3, 1, 0o644)),
            ("grown", file(4, 1, 0o644)),
            ("touched", file(3, 2, 0o644)),
            ("edited", file(3, 2, 0o644)),
            ("chmod", file(3, 1, 0o600)),
            ("there/moved", file(5, 9, 0o644)),
            ("there", dir.clone()),
            ("link", EntryKind::Symlink { target: "grown".into() }),
            ("file2dir", dir.clone()),
            ("file2dir/empty", dir.clone()),
            ("d", EntryKind::Dir { mode: 0o755 }),
            ("new", file(0, 1, 0o644)),
        ]);
        let mut asked = Vec::new();
        let cs = plan(&old, &new, |side, p| {
            asked.push((side, p.to_string()));
            Ok::<_, ()>(match (side, p.as_str()) {
                (Side::New, "edited") => Digest([1; 32]),
                (_, "there/moved") | (_, "moved") => Digest([7; 32]),
                _ => Digest([0; 32]),
            })
        })
        .unwrap();
        assert_eq!(paths(&cs.removed), ["file2dir", "gone", "moved"]);
        assert_eq!(
            cs.dirs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["file2dir", "file2dir/empty", "there"]
        );
        assert_eq!(paths(&cs.changed), ["edited", "grown"]);
        assert_eq!(paths(&cs.added), ["new"]);
        assert_eq!(cs.renamed.len(), 1);
        assert_eq!((cs.renamed[0].from.as_str(), cs.renamed[0].to.as_str()), ("moved", "there/moved"));
        assert_eq!(cs.symlinks, vec![(SitePath::new("link").unwrap(), "grown".to_string())]);
        let attrs: Vec<_> = cs.attrs.iter().map(|(p, m, t)| (p.as_str(), *m, t.map(|t| t.secs))).collect();
        assert_eq!(
            attrs,
            [
                ("chmod", 0o600, None),
                ("d", 0o755, None),
                ("touched", 0o644, Some(2)),
                ("there/moved", 0o644, Some(9))
            ]
        );
        // Unchanged files and different-size files are never hashed.
        assert!(!asked.iter().any(|(_, p)| p == "same" || p == "grown" || p == "new"), "{asked:?}");
        assert!(plan(&new, &new, |_, _| Err::<Digest, ()>(())).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn delta_round_trips_random_edits(
            seed in any::<u64>(),
            len in 0usize..20_000,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
        ) {
            let old = pseudo_random(len, seed | 1);
            let mut new = old.clone();
            for (at, remove, insert) in edits {
                let at = if new.is_empty() { 0 } else { at.index(new.len()) };
                let end = (at + remove).min(new.len());
                new.splice(at..end, insert);
            }
            prop_assert_eq!(roundtrip(&old, &new), new);
        }

        #[test]
        fn apply_never_panics_on_random_ops(ops in proptest::collection::vec(any::<u8>(), 0..200), size in 0u64..100) {
            let base = pseudo_random(64, 5);
            let _ = apply(&mut &ops[..], &mut Cursor::new(&base), 64, &mut Vec::new(), size);
        }
    }
}
