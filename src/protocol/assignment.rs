//! The assignment: the unit of content that travels from the CCM to every
//! back-end server (patent FIG. 4A/4B).
//!
//! An assignment is one file:
//!
//! ```text
//! +--------+----------------------------+------------------+---------+
//! | header | data part (sections)        | body (commands)  | trailer |
//! +--------+----------------------------+------------------+---------+
//!   200 B    header.data_len bytes          header.body_len    40 B
//! ```
//!
//! - The **header** holds the administrative data: magic, format version,
//!   kind, serial, the serial it is a delta against, job id, creation time,
//!   command count, the lengths of body and data, the SHA-256 of the data
//!   part, (when encrypted) the key's fingerprint and a random salt, and the
//!   name of the site it belongs to.
//! - The **data part** is a sequence of *sections*, one per command that
//!   carries bytes (a new file's content, a patch's delta ops). A section is a
//!   run of *chunks* of at most [`CHUNK_SIZE`] raw bytes, each lz4-compressed
//!   when that pays, and each sealed with AES-256-GCM when the assignment is
//!   encrypted. Chunking bounds the memory of both ends whatever the file size.
//! - The **body** lists the commands in the order a server executes them.
//! - The **trailer** holds the SHA-256 of header and body (the command
//!   sequence, bound to its header).
//!
//! The data part comes before the body so that a writer streams file
//! contents straight into the output and fills in the header at the end.
//!
//! Header-only assignments (`commit`, `abort`, `rollback`) have no data and
//! no commands. A full assignment (`base_serial` 0) builds a release from
//! nothing; a delta assignment builds it from release `base_serial`, and its
//! patches and renames read their sources from that base release.
//!
//! Decoding is strict: every length is bounded before anything is allocated,
//! the trailer and data hashes are checked before a single command is
//! returned, every path is a [`SitePath`], every symlink stays inside the
//! tree, and nothing is written through a symlink the assignment itself
//! creates. All integers are little-endian.

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

use bytes::BufMut;
use serde::Serialize;
use thiserror::Error;

use super::bytes::{DecodeError, Reader};
use super::crypto::{ChunkCipher, ContentKey, CryptoError, Digest, Sha256, AEAD_TAG_LEN};
use super::ids::{AssignmentSerial, JobId};
use super::paths::{check_symlink_target, PathError, SiteName, SitePath, TreeLinks, MAX_PATH_LEN};

/// First bytes of every assignment.
pub const MAGIC: [u8; 8] = *b"CMASSIGN";
/// First bytes of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"CMTRAILR";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 1 + 8 + 8 + 8 + 8 + 4 + 8 + 8 + 32 + 8 + 32 + SITE_FIELD_LEN;
/// Bytes of the header's site name field (the name, NUL-padded).
pub const SITE_FIELD_LEN: usize = super::paths::MAX_SITE_NAME;
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 8 + 32;
/// Largest body accepted (commands), 256 MiB: about two million files.
pub const MAX_BODY_LEN: u64 = 256 << 20;
/// Most commands accepted in one assignment (about four million files): the
/// decoded commands take about 40 times their smallest encoding in memory,
/// so the count is bounded on its own, not only through the body's length.
pub const MAX_COMMANDS: u32 = 1 << 22;
/// Largest data part accepted, 1 TiB.
pub const MAX_DATA_LEN: u64 = 1 << 40;
/// Raw bytes per chunk written.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Largest raw chunk accepted when reading (room for future writers).
pub const MAX_CHUNK_RAW: usize = 4 << 20;
/// Bytes of a chunk's header: flags, raw length, stored length.
pub const CHUNK_HEADER_LEN: usize = 1 + 4 + 4;
/// Permission bits a file or directory may carry (no set-id, no sticky).
pub const MODE_MASK: u32 = 0o777;

const FLAG_ENCRYPTED: u8 = 1;
const CHUNK_LZ4: u8 = 1;

/// Why an assignment was refused. Every variant says what and where.
#[derive(Debug, Error)]
pub enum FormatError {
    /// A field could not be decoded.
    #[error("malformed assignment: {0}")]
    Decode(#[from] DecodeError),
    /// Not an assignment at all.
    #[error("not an assignment file (bad magic bytes)")]
    BadMagic,
    /// Written by a newer or older format.
    #[error("assignment format version {0} is not supported (this build reads version {FORMAT_VERSION})")]
    Version(u16),
    /// The file is shorter or longer than its header says.
    #[error("assignment is {actual} bytes but its header describes {expected}: truncated or padded")]
    Length {
        /// Bytes the header describes.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The header or body does not match the trailer's hash.
    #[error("the commands or header are corrupted (SHA-256 in the trailer does not match)")]
    CommandsCorrupted,
    /// The data part does not match the header's hash.
    #[error("the data part is corrupted (SHA-256 {actual} does not match {expected} in the header)")]
    DataCorrupted {
        /// From the header.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// A command's path is unsafe or malformed.
    #[error("command {index}: {source}")]
    Path {
        /// Position of the command.
        index: usize,
        /// What is wrong.
        source: PathError,
    },
    /// A symlink of the release the assignment builds leads outside it.
    #[error("invalid assignment: {source}")]
    Symlink {
        /// Which symlink, and why.
        source: PathError,
    },
    /// Some other rule of the format is broken.
    #[error("invalid assignment: {0}")]
    Invalid(String),
    /// Encrypted, and no key was given.
    #[error("assignment is encrypted (key id {key_id}); give the key file with --decrypt-key")]
    KeyRequired {
        /// Fingerprint of the key it needs.
        key_id: String,
    },
    /// Encrypted with another key.
    #[error("wrong key: the assignment was encrypted with key id {expected}, the key given has id {actual}")]
    WrongKey {
        /// Fingerprint in the header.
        expected: String,
        /// Fingerprint of the key given.
        actual: String,
    },
    /// A chunk failed to decrypt.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A chunk of a section is malformed.
    #[error("data section at offset {offset}: {problem}")]
    Chunk {
        /// Offset of the section in the data part.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::Invalid(msg.into())
}

/// What an assignment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Build a new release from commands and data (into `incoming/`).
    Content = 1,
    /// Make release `serial` live.
    Commit = 2,
    /// Discard release `serial` before it went live.
    Abort = 3,
    /// Switch live back to the release before the current one.
    Rollback = 4,
}

impl Kind {
    /// Its name, as the node API and logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Content => "content",
            Kind::Commit => "commit",
            Kind::Abort => "abort",
            Kind::Rollback => "rollback",
        }
    }

    fn from_u8(v: u8) -> Result<Kind, FormatError> {
        Ok(match v {
            1 => Kind::Content,
            2 => Kind::Commit,
            3 => Kind::Abort,
            4 => Kind::Rollback,
            value => return Err(DecodeError::Invalid { what: "kind", value: u64::from(value) }.into()),
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Encryption parameters in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Encryption {
    /// Fingerprint of the content key ([`ContentKey::id`]).
    #[serde(serialize_with = "hex_ser")]
    pub key_id: [u8; 8],
    /// Random salt that derives this assignment's subkey.
    #[serde(serialize_with = "hex_ser")]
    pub salt: [u8; 32],
}

fn hex_ser<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// The header. See the module docs for its place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// What the assignment does.
    pub kind: Kind,
    /// The hosted site it belongs to (its directory name on every server).
    pub site: SiteName,
    /// Its serial; a content assignment produces release `serial`.
    pub serial: AssignmentSerial,
    /// The release it is a delta against; 0 for a full assignment.
    pub base_serial: AssignmentSerial,
    /// The job that made it (0 for offline use).
    pub job_id: JobId,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
    /// Number of commands in the body.
    pub command_count: u32,
    /// Bytes of the body.
    pub body_len: u64,
    /// Bytes of the data part.
    pub data_len: u64,
    /// SHA-256 of the data part.
    pub data_sha256: Digest,
    /// Present when the data sections are encrypted.
    pub encryption: Option<Encryption>,
}

impl Header {
    /// A header-only assignment (`commit`, `abort` or `rollback`).
    pub fn control(
        kind: Kind,
        site: SiteName,
        serial: AssignmentSerial,
        job_id: JobId,
        created_ms: u64,
    ) -> Header {
        Header {
            kind,
            site,
            serial,
            base_serial: AssignmentSerial(0),
            job_id,
            created_ms,
            command_count: 0,
            body_len: 0,
            data_len: 0,
            data_sha256: Digest(super::crypto::sha256(&[])),
            encryption: None,
        }
    }

    /// Offset of the body in the file.
    pub fn body_offset(&self) -> u64 {
        HEADER_LEN as u64 + self.data_len
    }

    /// Length of the whole file.
    pub fn total_len(&self) -> u64 {
        self.body_offset() + self.body_len + TRAILER_LEN as u64
    }

    /// True for a delta assignment (one with a base release).
    pub fn is_delta(&self) -> bool {
        self.base_serial.0 != 0
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut v = Vec::with_capacity(HEADER_LEN);
        v.put_slice(&MAGIC);
        v.put_u16_le(FORMAT_VERSION);
        v.put_u8(self.kind as u8);
        v.put_u8(if self.encryption.is_some() { FLAG_ENCRYPTED } else { 0 });
        v.put_u64_le(self.serial.0);
        v.put_u64_le(self.base_serial.0);
        v.put_u64_le(self.job_id.0);
        v.put_u64_le(self.created_ms);
        v.put_u32_le(self.command_count);
        v.put_u64_le(self.body_len);
        v.put_u64_le(self.data_len);
        v.put_slice(&self.data_sha256.0);
        let enc = self.encryption.unwrap_or(Encryption { key_id: [0; 8], salt: [0; 32] });
        v.put_slice(&enc.key_id);
        v.put_slice(&enc.salt);
        let mut site = [0u8; SITE_FIELD_LEN];
        site[..self.site.as_str().len()].copy_from_slice(self.site.as_str().as_bytes());
        v.put_slice(&site);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Decodes and checks a header (the first [`HEADER_LEN`] bytes of a file).
    pub fn decode(bytes: &[u8]) -> Result<Header, FormatError> {
        let mut r = Reader::new(bytes);
        if r.array::<8>("magic")? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u16("version")?;
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let kind = Kind::from_u8(r.u8("kind")?)?;
        let flags = r.u8("flags")?;
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(DecodeError::Invalid { what: "flags", value: u64::from(flags) }.into());
        }
        let serial = AssignmentSerial(r.u64("serial")?);
        let base_serial = AssignmentSerial(r.u64("base serial")?);
        let job_id = JobId(r.u64("job id")?);
        let created_ms = r.u64("created")?;
        let command_count = r.u32("command count")?;
        let body_len = r.u64("body length")?;
        let data_len = r.u64("data length")?;
        let data_sha256 = Digest(r.array("data hash")?);
        let key_id = r.array::<8>("key id")?;
        let salt = r.array::<32>("salt")?;
        let site_field = r.array::<SITE_FIELD_LEN>("site")?;
        r.finish("header")?;
        let end = site_field.iter().position(|&b| b == 0).unwrap_or(SITE_FIELD_LEN);
        if site_field[end..].iter().any(|&b| b != 0) {
            return Err(invalid("the site field has bytes after its NUL padding"));
        }
        let site = std::str::from_utf8(&site_field[..end])
            .ok()
            .and_then(|s| SiteName::new(s).ok())
            .ok_or_else(|| invalid("the site field is not a valid site name"))?;
        let encryption = if flags & FLAG_ENCRYPTED != 0 {
            Some(Encryption { key_id, salt })
        } else if key_id != [0; 8] || salt != [0; 32] {
            return Err(invalid("key fields are set but the encrypted flag is not"));
        } else {
            None
        };
        let h = Header {
            kind,
            site,
            serial,
            base_serial,
            job_id,
            created_ms,
            command_count,
            body_len,
            data_len,
            data_sha256,
            encryption,
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), FormatError> {
        if self.serial.0 == 0 {
            return Err(invalid("serial 0 is reserved (it means 'no release')"));
        }
        if self.body_len > MAX_BODY_LEN {
            return Err(DecodeError::TooLong { what: "body", len: self.body_len, max: MAX_BODY_LEN }.into());
        }
        if self.data_len > MAX_DATA_LEN {
            return Err(
                DecodeError::TooLong { what: "data part", len: self.data_len, max: MAX_DATA_LEN }.into()
            );
        }
        if self.command_count > MAX_COMMANDS {
            return Err(DecodeError::TooLong {
                what: "command list",
                len: u64::from(self.command_count),
                max: u64::from(MAX_COMMANDS),
            }
            .into());
        }
        if u64::from(self.command_count) > self.body_len {
            return Err(invalid(format!(
                "{} commands cannot fit in a body of {} bytes",
                self.command_count, self.body_len
            )));
        }
        match self.kind {
            Kind::Content => {
                if self.base_serial >= self.serial {
                    return Err(invalid(format!(
                        "base release {} is not older than serial {}",
                        self.base_serial, self.serial
                    )));
                }
            }
            _ => {
                if self.body_len != 0
                    || self.data_len != 0
                    || self.command_count != 0
                    || self.encryption.is_some()
                {
                    return Err(invalid(
                        "a commit, abort or rollback assignment carries no commands or data",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A file's modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Mtime {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds, below one billion.
    pub nanos: u32,
}

/// Mode and modification time of a file written by a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct FileMeta {
    /// Permission bits (within [`MODE_MASK`]).
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
}

/// Where a section lies in the data part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct DataRef {
    /// Offset from the start of the data part.
    pub offset: u64,
    /// Stored bytes (chunk headers, compressed or sealed payloads).
    pub len: u64,
    /// Bytes once decoded.
    pub raw_len: u64,
}

/// One step of an assignment, executed in order on the new release.
///
/// Sources (`base` of a patch, `from` of a rename) are read from the *base
/// release*, never from the release being built, so the result does not
/// depend on the order in which sources are consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Create a directory (its parent exists).
    MakeDir {
        /// The directory.
        path: SitePath,
        /// Its permission bits.
        mode: u32,
    },
    /// Write a whole file from a data section.
    PutFile {
        /// The file.
        path: SitePath,
        /// Mode and mtime.
        meta: FileMeta,
        /// Its length.
        size: u64,
        /// SHA-256 of its content.
        sha256: Digest,
        /// The section with its content.
        data: DataRef,
    },
    /// Write a file from a base file and a delta (a section of delta ops).
    PatchFile {
        /// The file.
        path: SitePath,
        /// The file in the base release the delta applies to.
        base: SitePath,
        /// SHA-256 the base must have.
        base_sha256: Digest,
        /// Mode and mtime of the result.
        meta: FileMeta,
        /// Length of the result.
        size: u64,
        /// SHA-256 of the result.
        sha256: Digest,
        /// The section with the delta ops.
        data: DataRef,
    },
    /// Delete a file, symlink or directory tree.
    Remove {
        /// What to delete.
        path: SitePath,
    },
    /// Move a file: `to` gets the file at `from` in the base release, by
    /// hard link, without sending its bytes. The old place is deleted by a
    /// `Remove` of its own, so that a new entry may take it.
    Rename {
        /// The file in the base release.
        from: SitePath,
        /// Where it goes.
        to: SitePath,
        /// SHA-256 of its content.
        sha256: Digest,
    },
    /// Change the permission bits (and, for files, the mtime) of an entry.
    SetMode {
        /// The entry.
        path: SitePath,
        /// New permission bits.
        mode: u32,
        /// New mtime, for files.
        mtime: Option<Mtime>,
    },
    /// Create or replace a symlink; the target stays inside the tree.
    Symlink {
        /// The link.
        path: SitePath,
        /// Where it points, relative to the link's directory.
        target: String,
    },
}

const TAG_MKDIR: u8 = 1;
const TAG_PUT: u8 = 2;
const TAG_PATCH: u8 = 3;
const TAG_REMOVE: u8 = 4;
const TAG_RENAME: u8 = 5;
const TAG_SETMODE: u8 = 6;
const TAG_SYMLINK: u8 = 7;

impl Command {
    /// The path the command creates or changes.
    pub fn path(&self) -> &SitePath {
        match self {
            Command::MakeDir { path, .. }
            | Command::PutFile { path, .. }
            | Command::PatchFile { path, .. }
            | Command::Remove { path }
            | Command::SetMode { path, .. }
            | Command::Symlink { path, .. } => path,
            Command::Rename { to, .. } => to,
        }
    }

    /// The data section it reads, if any.
    pub fn data(&self) -> Option<&DataRef> {
        match self {
            Command::PutFile { data, .. } | Command::PatchFile { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Appends the command's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn path(out: &mut Vec<u8>, p: &str) {
            // Paths and targets are at most MAX_PATH_LEN bytes, below u16::MAX.
            out.put_u16_le(p.len() as u16);
            out.put_slice(p.as_bytes());
        }
        fn meta(out: &mut Vec<u8>, m: &FileMeta) {
            out.put_u32_le(m.mode);
            mtime(out, &m.mtime);
        }
        fn mtime(out: &mut Vec<u8>, m: &Mtime) {
            out.put_i64_le(m.secs);
            out.put_u32_le(m.nanos);
        }
        fn data(out: &mut Vec<u8>, d: &DataRef) {
            out.put_u64_le(d.offset);
            out.put_u64_le(d.len);
            out.put_u64_le(d.raw_len);
        }
        match self {
            Command::MakeDir { path: p, mode } => {
                out.put_u8(TAG_MKDIR);
                path(out, p.as_str());
                out.put_u32_le(*mode);
            }
            Command::PutFile { path: p, meta: m, size, sha256, data: d } => {
                out.put_u8(TAG_PUT);
                path(out, p.as_str());
                meta(out, m);
                out.put_u64_le(*size);
                out.put_slice(&sha256.0);
                data(out, d);
            }
            Command::PatchFile { path: p, base, base_sha256, meta: m, size, sha256, data: d } => {
                out.put_u8(TAG_PATCH);
                path(out, p.as_str());
                path(out, base.as_str());
                out.put_slice(&base_sha256.0);
                meta(out, m);
                out.put_u64_le(*size);
                out.put_slice(&sha256.0);
                data(out, d);
            }
            Command::Remove { path: p } => {
                out.put_u8(TAG_REMOVE);
                path(out, p.as_str());
            }
            Command::Rename { from, to, sha256 } => {
                out.put_u8(TAG_RENAME);
                path(out, from.as_str());
                path(out, to.as_str());
                out.put_slice(&sha256.0);
            }
            Command::SetMode { path: p, mode, mtime: t } => {
                out.put_u8(TAG_SETMODE);
                path(out, p.as_str());
                out.put_u32_le(*mode);
                match t {
                    Some(t) => {
                        out.put_u8(1);
                        mtime(out, t);
                    }
                    None => out.put_u8(0),
                }
            }
            Command::Symlink { path: p, target } => {
                out.put_u8(TAG_SYMLINK);
                path(out, p.as_str());
                path(out, target);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, index: usize) -> Result<Command, FormatError> {
        let path_err = |source| FormatError::Path { index, source };
        let path = |r: &mut Reader<'_>, what| -> Result<SitePath, FormatError> {
            SitePath::new(r.str_u16(what, MAX_PATH_LEN)?).map_err(path_err)
        };
        fn mode(r: &mut Reader<'_>) -> Result<u32, FormatError> {
            let mode = r.u32("mode")?;
            if mode & !MODE_MASK != 0 {
                return Err(DecodeError::Invalid { what: "mode", value: u64::from(mode) }.into());
            }
            Ok(mode)
        }
        fn mtime(r: &mut Reader<'_>) -> Result<Mtime, FormatError> {
            let secs = r.i64("mtime")?;
            let nanos = r.u32("mtime nanoseconds")?;
            if nanos >= 1_000_000_000 {
                return Err(
                    DecodeError::Invalid { what: "mtime nanoseconds", value: u64::from(nanos) }.into()
                );
            }
            Ok(Mtime { secs, nanos })
        }
        fn meta(r: &mut Reader<'_>) -> Result<FileMeta, FormatError> {
            Ok(FileMeta { mode: mode(r)?, mtime: mtime(r)? })
        }
        fn digest(r: &mut Reader<'_>, what: &'static str) -> Result<Digest, FormatError> {
            Ok(Digest(r.array(what)?))
        }
        fn data(r: &mut Reader<'_>) -> Result<DataRef, FormatError> {
            Ok(DataRef {
                offset: r.u64("data offset")?,
                len: r.u64("data length")?,
                raw_len: r.u64("raw length")?,
            })
        }
        Ok(match r.u8("command tag")? {
            TAG_MKDIR => Command::MakeDir { path: path(r, "path")?, mode: mode(r)? },
            TAG_PUT => Command::PutFile {
                path: path(r, "path")?,
                meta: meta(r)?,
                size: r.u64("size")?,
                sha256: digest(r, "hash")?,
                data: data(r)?,
            },
            TAG_PATCH => Command::PatchFile {
                path: path(r, "path")?,
                base: path(r, "base path")?,
                base_sha256: digest(r, "base hash")?,
                meta: meta(r)?,
                size: r.u64("size")?,
                sha256: digest(r, "hash")?,
                data: data(r)?,
            },
            TAG_REMOVE => Command::Remove { path: path(r, "path")? },
            TAG_RENAME => Command::Rename {
                from: path(r, "source path")?,
                to: path(r, "path")?,
                sha256: digest(r, "hash")?,
            },
            TAG_SETMODE => {
                let p = path(r, "path")?;
                let m = mode(r)?;
                let t = match r.u8("mtime flag")? {
                    0 => None,
                    1 => Some(mtime(r)?),
                    value => {
                        return Err(
                            DecodeError::Invalid { what: "mtime flag", value: u64::from(value) }.into()
                        )
                    }
                };
                Command::SetMode { path: p, mode: m, mtime: t }
            }
            TAG_SYMLINK => {
                let p = path(r, "path")?;
                let target = r.str_u16("symlink target", MAX_PATH_LEN)?.to_owned();
                check_symlink_target(&p, &target).map_err(path_err)?;
                Command::Symlink { path: p, target }
            }
            value => return Err(DecodeError::Invalid { what: "command tag", value: u64::from(value) }.into()),
        })
    }
}

/// SHA-256 of header and body, as stored in the trailer.
pub fn commands_hash(header: &[u8], body: &[u8]) -> Digest {
    let mut h = Sha256::default();
    h.update(header);
    h.update(body);
    h.digest()
}

/// The trailer's bytes for these header and body bytes.
pub fn encode_trailer(header: &[u8], body: &[u8]) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[..8].copy_from_slice(&TRAILER_MAGIC);
    out[8..].copy_from_slice(&commands_hash(header, body).0);
    out
}

/// Checks the trailer against header and body bytes, then decodes and
/// validates the commands. Nothing in the body is parsed before its hash is
/// known to be right.
pub fn decode_body(
    header: &Header,
    header_bytes: &[u8],
    body: &[u8],
    trailer: &[u8],
) -> Result<Vec<Command>, FormatError> {
    let mut t = Reader::new(trailer);
    if t.array::<8>("trailer magic")? != TRAILER_MAGIC {
        return Err(FormatError::CommandsCorrupted);
    }
    let stored = Digest(t.array("trailer hash")?);
    t.finish("trailer")?;
    if stored != commands_hash(header_bytes, body) {
        return Err(FormatError::CommandsCorrupted);
    }
    let mut r = Reader::new(body);
    // The count is bounded by the header check; reserve no more than a
    // modest start, so that junk that claims many commands fails before it
    // has cost much memory.
    let mut commands = Vec::with_capacity((header.command_count as usize).min(1 << 16));
    for index in 0..header.command_count as usize {
        commands.push(Command::decode(&mut r, index)?);
    }
    r.finish("commands")?;
    validate_commands(header, &commands)?;
    Ok(commands)
}

/// Rules that span commands: data inside the data part, sizes consistent
/// (and their total within a `u64`), base references only in delta assignments, no path that goes through
/// a symlink created earlier in the same assignment, and (for a full
/// assignment, whose commands alone make the release) every symlink of the
/// release resolving inside it. A delta's symlinks are checked against its
/// base release by the applier ([`links_after`]).
///
/// Symlinks are kept in an ordered set, so that each check is a lookup per
/// ancestor and a removal takes the removed tree's links as one range: a
/// body of millions of commands costs `n log n`, not `n²`.
pub fn validate_commands(header: &Header, commands: &[Command]) -> Result<(), FormatError> {
    let mut links: BTreeSet<&str> = BTreeSet::new();
    // What the files add up to: checked, since the sizes are the sender's
    // word and a sum that wraps round would pass any free-space check.
    let mut total: u64 = 0;
    for (index, cmd) in commands.iter().enumerate() {
        let fail = |msg: String| FormatError::Invalid(format!("command {index} ({}): {msg}", cmd.path()));
        if let Command::PutFile { size, .. } | Command::PatchFile { size, .. } = cmd {
            total = total.checked_add(*size).ok_or_else(|| {
                fail(format!(
                    "its size {size} brings the files' total past {} bytes; no release is that large",
                    u64::MAX
                ))
            })?;
        }
        if let Some(d) = cmd.data() {
            let end = d.offset.checked_add(d.len).filter(|&e| e <= header.data_len);
            if end.is_none() {
                return Err(fail(format!("data section {}+{} lies outside the data part", d.offset, d.len)));
            }
        }
        match cmd {
            Command::PutFile { size, data, .. } if *size != data.raw_len => {
                return Err(fail(format!("size {size} differs from its data section's {}", data.raw_len)));
            }
            Command::PatchFile { .. } | Command::Rename { .. } if !header.is_delta() => {
                return Err(fail("a full assignment (no base release) cannot patch or rename".into()));
            }
            _ => {}
        }
        let path = cmd.path();
        if let Some(link) = path.ancestors().find(|a| links.contains(a)) {
            return Err(fail(format!("writes through the symlink {link} created by this assignment")));
        }
        match cmd {
            Command::Symlink { path, .. } => {
                links.insert(path.as_str());
            }
            Command::Remove { path } => {
                links.remove(path.as_str());
                let prefix = format!("{path}/");
                let under: Vec<&str> = links
                    .range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded))
                    .take_while(|l| l.starts_with(&prefix))
                    .copied()
                    .collect();
                for l in under {
                    links.remove(l);
                }
            }
            Command::SetMode { .. } => {}
            other => {
                links.remove(other.path().as_str());
            }
        }
    }
    if !header.is_delta() {
        links_after(TreeLinks::new(), commands).check().map_err(|source| FormatError::Symlink { source })?;
    }
    Ok(())
}

/// The symlinks of the release these commands build from a base release
/// whose symlinks are `base` (empty for a full assignment): what
/// [`TreeLinks::check`] must accept before anything is written.
pub fn links_after(mut links: TreeLinks, commands: &[Command]) -> TreeLinks {
    for cmd in commands {
        match cmd {
            Command::Symlink { path, target } => links.insert(path, target),
            Command::Remove { path } => links.remove_tree(path),
            Command::SetMode { .. } => {}
            // A directory, file or moved file takes the place of whatever was there.
            other => links.remove(other.path()),
        }
    }
    links
}

/// How many raw and stored bytes went into a section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionStats {
    /// Bytes before compression.
    pub raw: u64,
    /// Bytes written (chunk headers and tags included).
    pub stored: u64,
}

/// Parameters of a new content assignment.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    /// The site.
    pub site: SiteName,
    /// Serial of the release it builds.
    pub serial: AssignmentSerial,
    /// Release it is a delta against, 0 for a full assignment.
    pub base_serial: AssignmentSerial,
    /// Job that makes it.
    pub job_id: JobId,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Keep a compressed chunk only if it saves this fraction.
    pub min_compression_gain: f64,
}

/// Writes a content assignment to a `Write + Seek` sink in one pass: a
/// placeholder header, then sections as they are added, then body and
/// trailer, then the real header.
pub struct AssignmentWriter<W: Write + Seek> {
    out: W,
    params: NewAssignment,
    cipher: Option<(ChunkCipher, Encryption)>,
    data_len: u64,
    data_hash: Sha256,
    body: Vec<u8>,
    commands: u32,
    buf: Vec<u8>,
}

impl<W: Write + Seek> AssignmentWriter<W> {
    /// Starts an assignment at the sink's current position (which should be 0).
    /// With `key`, every section is encrypted under a subkey derived from `salt`,
    /// which must be random.
    pub fn new(mut out: W, params: NewAssignment, key: Option<(&ContentKey, [u8; 32])>) -> io::Result<Self> {
        out.write_all(&[0u8; HEADER_LEN])?;
        let cipher = key.map(|(k, salt)| (k.cipher(&salt), Encryption { key_id: k.id(), salt }));
        Ok(AssignmentWriter {
            out,
            params,
            cipher,
            data_len: 0,
            data_hash: Sha256::default(),
            body: Vec::new(),
            commands: 0,
            buf: Vec::with_capacity(CHUNK_SIZE),
        })
    }

    fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.data_hash.update(bytes);
        self.data_len += bytes.len() as u64;
        Ok(())
    }

    fn write_chunk(&mut self, raw: &[u8], compress: bool) -> io::Result<()> {
        let mut flags = 0u8;
        let mut payload = None;
        if compress {
            let packed = lz4_flex::block::compress(raw);
            let limit = raw.len() as f64 * (1.0 - self.params.min_compression_gain);
            if (packed.len() as f64) < limit {
                flags |= CHUNK_LZ4;
                payload = Some(packed);
            }
        }
        let mut payload = payload.unwrap_or_else(|| raw.to_vec());
        let stored_len = payload.len() + if self.cipher.is_some() { AEAD_TAG_LEN } else { 0 };
        let mut head = Vec::with_capacity(CHUNK_HEADER_LEN);
        head.put_u8(flags);
        // Chunks hold at most CHUNK_SIZE raw bytes; lz4 output and tag stay far below u32::MAX.
        head.put_u32_le(raw.len() as u32);
        head.put_u32_le(stored_len as u32);
        if let Some((cipher, _)) = &self.cipher {
            let offset = self.data_len + CHUNK_HEADER_LEN as u64;
            cipher.seal(offset, &chunk_aad(self.params.serial, &head), &mut payload);
        }
        self.write_data(&head)?;
        self.write_data(&payload)
    }

    /// Streams `src` into a new section and returns where it is. Chunks are
    /// lz4-compressed when `compress` is set and compression pays.
    pub fn add_section(
        &mut self,
        src: &mut impl Read,
        compress: bool,
    ) -> io::Result<(DataRef, SectionStats)> {
        let offset = self.data_len;
        let mut raw_len = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            buf.clear();
            let n = src.by_ref().take(CHUNK_SIZE as u64).read_to_end(&mut buf)?;
            if n == 0 && raw_len > 0 {
                break;
            }
            raw_len += n as u64;
            self.write_chunk(&buf, compress)?;
            if n < CHUNK_SIZE {
                break;
            }
        }
        self.buf = buf;
        let len = self.data_len - offset;
        Ok((DataRef { offset, len, raw_len }, SectionStats { raw: raw_len, stored: len }))
    }

    /// Appends a command to the body.
    pub fn push(&mut self, cmd: &Command) {
        cmd.encode(&mut self.body);
        self.commands += 1;
    }

    /// Writes body and trailer, then the header; returns the header and the sink.
    pub fn finish(mut self) -> io::Result<(Header, W)> {
        let header = Header {
            kind: Kind::Content,
            site: self.params.site.clone(),
            serial: self.params.serial,
            base_serial: self.params.base_serial,
            job_id: self.params.job_id,
            created_ms: self.params.created_ms,
            command_count: self.commands,
            body_len: self.body.len() as u64,
            data_len: self.data_len,
            data_sha256: self.data_hash.digest(),
            encryption: self.cipher.as_ref().map(|(_, e)| *e),
        };
        header.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let head = header.encode();
        self.out.write_all(&self.body)?;
        self.out.write_all(&encode_trailer(&head, &self.body))?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&head)?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok((header, self.out))
    }
}

/// Encodes a header-only assignment (`commit`, `abort`, `rollback`).
pub fn encode_control(header: &Header) -> Vec<u8> {
    let head = header.encode();
    let mut out = head.to_vec();
    out.extend_from_slice(&encode_trailer(&head, &[]));
    out
}

fn chunk_aad(serial: AssignmentSerial, chunk_header: &[u8]) -> Vec<u8> {
    let mut aad = serial.0.to_le_bytes().to_vec();
    aad.extend_from_slice(chunk_header);
    aad
}

/// Returns the cipher that opens this assignment's sections, checking that
/// the key given is the key it was encrypted with.
pub fn cipher_for(header: &Header, key: Option<&ContentKey>) -> Result<Option<ChunkCipher>, FormatError> {
    match (&header.encryption, key) {
        (None, _) => Ok(None),
        (Some(e), None) => Err(FormatError::KeyRequired { key_id: hex::encode(e.key_id) }),
        (Some(e), Some(k)) if k.id() != e.key_id => {
            Err(FormatError::WrongKey { expected: hex::encode(e.key_id), actual: hex::encode(k.id()) })
        }
        (Some(e), Some(k)) => Ok(Some(k.cipher(&e.salt))),
    }
}

/// Reads one section's raw bytes: decrypts and decompresses chunk by chunk,
/// so memory stays at one chunk whatever the section's size. `src` must be
/// positioned at the section's first byte and yield at least `data.len` bytes.
pub struct SectionReader<'c, R: Read> {
    src: R,
    data: DataRef,
    serial: AssignmentSerial,
    cipher: Option<&'c ChunkCipher>,
    consumed: u64,
    produced: u64,
    chunk: Vec<u8>,
    pos: usize,
    stored: Vec<u8>,
}

impl<'c, R: Read> SectionReader<'c, R> {
    /// A reader of section `data` of assignment `serial`.
    pub fn new(src: R, data: DataRef, serial: AssignmentSerial, cipher: Option<&'c ChunkCipher>) -> Self {
        SectionReader {
            src,
            data,
            serial,
            cipher,
            consumed: 0,
            produced: 0,
            chunk: Vec::new(),
            pos: 0,
            stored: Vec::new(),
        }
    }

    fn fail(&self, problem: impl Into<String>) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            FormatError::Chunk { offset: self.data.offset, problem: problem.into() },
        )
    }

    /// Loads the next chunk; false at the end of the section.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.consumed == self.data.len {
            if self.produced != self.data.raw_len {
                return Err(
                    self.fail(format!("holds {} bytes, expected {}", self.produced, self.data.raw_len))
                );
            }
            return Ok(false);
        }
        if self.data.len - self.consumed < CHUNK_HEADER_LEN as u64 {
            return Err(self.fail("ends inside a chunk header"));
        }
        let mut head = [0u8; CHUNK_HEADER_LEN];
        self.src.read_exact(&mut head)?;
        let mut r = Reader::new(&head);
        let (flags, raw_len, stored_len) = (
            r.u8("chunk flags").unwrap_or(0xff),
            r.u32("chunk raw length").unwrap_or(u32::MAX) as usize,
            r.u32("chunk stored length").unwrap_or(u32::MAX) as u64,
        );
        if flags & !CHUNK_LZ4 != 0 {
            return Err(self.fail(format!("unknown chunk flags {flags:#x}")));
        }
        let tag = if self.cipher.is_some() { AEAD_TAG_LEN } else { 0 };
        let max_stored = (MAX_CHUNK_RAW + MAX_CHUNK_RAW / 200 + 64 + tag) as u64;
        let left = self.data.len - self.consumed - CHUNK_HEADER_LEN as u64;
        if raw_len > MAX_CHUNK_RAW || stored_len > max_stored || stored_len > left || stored_len < tag as u64
        {
            return Err(
                self.fail(format!("chunk of {raw_len} raw / {stored_len} stored bytes is out of bounds"))
            );
        }
        if self.produced.checked_add(raw_len as u64).is_none_or(|n| n > self.data.raw_len) {
            return Err(self.fail("chunks hold more bytes than the section declares"));
        }
        let chunk_offset = self.data.offset + self.consumed + CHUNK_HEADER_LEN as u64;
        self.consumed += CHUNK_HEADER_LEN as u64 + stored_len;
        self.stored.resize(stored_len as usize, 0);
        self.src.read_exact(&mut self.stored)?;
        let plain: &[u8] = match self.cipher {
            Some(c) => {
                let aad = chunk_aad(self.serial, &head);
                let n = c
                    .open(chunk_offset, &aad, &mut self.stored)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, FormatError::Crypto(e)))?
                    .len();
                &self.stored[..n]
            }
            None => &self.stored,
        };
        self.chunk.clear();
        if flags & CHUNK_LZ4 != 0 {
            self.chunk.resize(raw_len, 0);
            match lz4_flex::block::decompress_into(plain, &mut self.chunk) {
                Ok(n) if n == raw_len => {}
                _ => return Err(self.fail("a compressed chunk does not decompress to its declared size")),
            }
        } else {
            if plain.len() != raw_len {
                return Err(self.fail("a stored chunk's length differs from its declared size"));
            }
            self.chunk.extend_from_slice(plain);
        }
        self.produced += raw_len as u64;
        self.pos = 0;
        Ok(true)
    }
}

impl<R: Read> Read for SectionReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An in-memory, fully verified assignment, for tests and small assignments.
/// Files are read by `storage::assignment_file` instead, which never holds
/// the data part in memory.
#[derive(Debug)]
pub struct Decoded {
    /// The header.
    pub header: Header,
    /// The commands.
    pub commands: Vec<Command>,
}

/// Decodes and verifies a whole assignment held in memory.
pub fn decode(bytes: &[u8]) -> Result<Decoded, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Length { expected: HEADER_LEN as u64, actual: bytes.len() as u64 });
    }
    let header = Header::decode(&bytes[..HEADER_LEN])?;
    if header.total_len() != bytes.len() as u64 {
        return Err(FormatError::Length { expected: header.total_len(), actual: bytes.len() as u64 });
    }
    let body_at = header.body_offset() as usize;
    let trailer_at = body_at + header.body_len as usize;
    let commands =
        decode_body(&header, &bytes[..HEADER_LEN], &bytes[body_at..trailer_at], &bytes[trailer_at..])?;
    let actual = Digest::of(&bytes[HEADER_LEN..body_at]);
    if actual != header.data_sha256 {
        return Err(FormatError::DataCorrupted { expected: header.data_sha256, actual });
    }
    Ok(Decoded { header, commands })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn p(s: &str) -> SitePath {
        SitePath::new(s).unwrap()
    }

    fn site() -> SiteName {
        SiteName::new("www").unwrap()
    }

    fn params(serial: u64, base: u64) -> NewAssignment {
        NewAssignment {
            site: site(),
            serial: AssignmentSerial(serial),
            base_serial: AssignmentSerial(base),
            job_id: JobId(7),
            created_ms: 1_700_000_000_000,
            min_compression_gain: 0.05,
        }
    }

    /// Builds an assignment putting each `(path, content)` and returns its bytes.
    fn build(files: &[(&str, Vec<u8>)], key: Option<&ContentKey>) -> Vec<u8> {
        let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params(2, 0), key.map(|k| (k, [9u8; 32])))
            .unwrap();
        w.push(&Command::MakeDir { path: p("dir"), mode: 0o755 });
        for (path, content) in files {
            let (data, _) = w.add_section(&mut &content[..], true).unwrap();
            w.push(&Command::PutFile {
                path: p(path),
                meta: FileMeta { mode: 0o644, mtime: Mtime { secs: 5, nanos: 6 } },
                size: content.len() as u64,
                sha256: Digest::of(content),
                data,
            });
        }
        w.push(&Command::Symlink { path: p("dir/link"), target: "../a".into() });
        w.finish().unwrap().1.into_inner()
    }

    fn read_section(
        bytes: &[u8],
        d: &Decoded,
        data: DataRef,
        key: Option<&ContentKey>,
    ) -> io::Result<Vec<u8>> {
        let cipher = cipher_for(&d.header, key).unwrap();
        let start = HEADER_LEN + data.offset as usize;
        let mut r = SectionReader::new(
            &bytes[start..start + data.len as usize],
            data,
            d.header.serial,
            cipher.as_ref(),
        );
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
        let text = b"<html>hello hello hello hello</html>\n".repeat(100_000);
        let noise: Vec<u8> =
            (0..CHUNK_SIZE * 2 + 17).map(|i| (i * 7919 % 251) as u8 ^ (i >> 9) as u8).collect();
        vec![("a", text), ("dir/empty", Vec::new()), ("dir/noise.bin", noise)]
    }

    #[test]
    fn round_trip_plain_and_encrypted() {
        let key = ContentKey::from_secret(&[3u8; 32]).unwrap();
        for key in [None, Some(&key)] {
            let files = sample_files();
            let bytes = build(&files, key);
            let d = decode(&bytes).unwrap();
            assert_eq!(d.header.command_count, 5);
            assert_eq!(d.header.encryption.is_some(), key.is_some());
            for (cmd, (path, content)) in d.commands[1..4].iter().zip(&files) {
                let Command::PutFile { path: got, data, sha256, .. } = cmd else { panic!() };
                assert_eq!(got.as_str(), *path);
                assert_eq!(&read_section(&bytes, &d, *data, key).unwrap(), content);
                assert_eq!(*sha256, Digest::of(content));
            }
        }
    }

    #[test]
    fn compression_is_used_only_when_it_pays() {
        let files = sample_files();
        let bytes = build(&files, None);
        let d = decode(&bytes).unwrap();
        let Command::PutFile { data: text, .. } = d.commands[1] else { panic!() };
        assert!(text.len * 20 < text.raw_len, "text not compressed: {text:?}");
        let random: Vec<u8> = {
            let mut x = 1u64;
            (0..100_000)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect()
        };
        let bytes = build(&[("r", random.clone())], None);
        let d = decode(&bytes).unwrap();
        let Command::PutFile { data, .. } = d.commands[1] else { panic!() };
        assert_eq!(data.len, random.len() as u64 + CHUNK_HEADER_LEN as u64, "random data stored raw");
    }

    #[test]
    fn wrong_or_missing_key_is_named() {
        let key = ContentKey::from_secret(&[3u8; 32]).unwrap();
        let other = ContentKey::from_secret(&[4u8; 32]).unwrap();
        let bytes = build(&sample_files(), Some(&key));
        let d = decode(&bytes).unwrap();
        assert!(matches!(cipher_for(&d.header, None), Err(FormatError::KeyRequired { .. })));
        let err = cipher_for(&d.header, Some(&other)).err().unwrap();
        assert!(matches!(err, FormatError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("wrong key"));
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_rejected() {
        let bytes = build(&[("a", b"small file content".repeat(50)), ("b", vec![1, 2, 3])], None);
        decode(&bytes).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "flip at byte {i} of {} accepted", bytes.len());
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncation to {cut} accepted");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode(&long), Err(FormatError::Length { .. })));
    }

    /// Re-signs a body so that semantic checks, not the hash, must catch it.
    fn resign(commands: &[Command], base: u64) -> Result<Decoded, FormatError> {
        let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params(5, base), None).unwrap();
        let (data, _) = w.add_section(&mut &b"xyz"[..], false).unwrap();
        assert_eq!(data.raw_len, 3);
        for c in commands {
            w.push(c);
        }
        decode(&w.finish().unwrap().1.into_inner())
    }

    #[test]
    fn a_header_claiming_too_many_commands_is_refused_before_any_is_decoded() {
        let mut h = Header::control(Kind::Content, site(), AssignmentSerial(1), JobId(0), 0);
        h.body_len = MAX_BODY_LEN;
        h.command_count = MAX_COMMANDS;
        assert!(Header::decode(&h.encode()).is_ok());
        h.command_count = MAX_COMMANDS + 1;
        let err = Header::decode(&h.encode()).unwrap_err();
        assert!(err.to_string().contains("command list"), "{err}");
    }

    #[test]
    fn escaping_paths_are_rejected_even_when_correctly_signed() {
        for bad in ["../x", "/etc/x", "a/../../x", "a//b", "./a"] {
            let mut body = Vec::new();
            // Encode by hand: SitePath would refuse these.
            body.put_u8(TAG_REMOVE);
            body.put_u16_le(bad.len() as u16);
            body.put_slice(bad.as_bytes());
            let mut h = Header::control(Kind::Content, site(), AssignmentSerial(1), JobId(0), 0);
            h.command_count = 1;
            h.body_len = body.len() as u64;
            let head = h.encode();
            let mut file = head.to_vec();
            file.extend_from_slice(&body);
            file.extend_from_slice(&encode_trailer(&head, &body));
            let err = decode(&file).unwrap_err();
            assert!(matches!(err, FormatError::Path { index: 0, .. }), "{bad}: {err}");
        }
        let out = Command::Symlink { path: p("a/l"), target: "../../etc".into() };
        let mut body = Vec::new();
        out.encode(&mut body);
        let mut h = Header::control(Kind::Content, site(), AssignmentSerial(1), JobId(0), 0);
        h.command_count = 1;
        h.body_len = body.len() as u64;
        let head = h.encode();
        let mut file = head.to_vec();
        file.extend_from_slice(&body);
        file.extend_from_slice(&encode_trailer(&head, &body));
        assert!(matches!(decode(&file), Err(FormatError::Path { source: PathError::Escapes { .. }, .. })));
    }

    /// Issue 15 item 1: each symlink passes the text check, but `passwd`
    /// climbs out through `…/root`; a full assignment's commands are the
    /// whole release, so the decoder refuses it, naming the link.
    #[test]
    fn a_full_assignment_whose_symlinks_chain_out_of_the_tree_is_refused() {
        let up = "../../../../../../../../../..";
        let mut cmds: Vec<Command> = Vec::new();
        let mut dir = String::new();
        for c in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
            dir = if dir.is_empty() { c.to_owned() } else { format!("{dir}/{c}") };
            cmds.push(Command::MakeDir { path: p(&dir), mode: 0o755 });
        }
        cmds.push(Command::Symlink { path: p(&format!("{dir}/root")), target: up.into() });
        let passwd = Command::Symlink { path: p("passwd"), target: format!("{dir}/root/{up}/etc/passwd") };
        resign(&cmds, 0).unwrap();
        cmds.push(passwd);
        let err = resign(&cmds, 0).unwrap_err();
        assert!(matches!(err, FormatError::Symlink { source: PathError::EscapesThrough { .. } }), "{err}");
        assert!(err.to_string().contains("symlink passwd ->"), "{err}");
        // Removing the climbing link first makes the same target a plain path.
        cmds.insert(cmds.len() - 1, Command::Remove { path: p(&format!("{dir}/root")) });
        resign(&cmds, 0).unwrap();
    }

    #[test]
    fn writing_through_an_own_symlink_is_rejected() {
        let data = DataRef { offset: 0, len: 12, raw_len: 3 };
        let put = |path: &str| Command::PutFile {
            path: p(path),
            meta: FileMeta::default(),
            size: 3,
            sha256: Digest::of(b"xyz"),
            data,
        };
        let link = Command::Symlink { path: p("l"), target: "d".into() };
        let err = resign(&[link.clone(), put("l/passwd")], 0).unwrap_err();
        assert!(err.to_string().contains("through the symlink l"), "{err}");
        // Replaced or removed first: fine.
        resign(
            &[
                link.clone(),
                Command::Remove { path: p("l") },
                Command::MakeDir { path: p("l"), mode: 0o755 },
                put("l/x"),
            ],
            0,
        )
        .unwrap();
        resign(&[link, Command::MakeDir { path: p("l"), mode: 0o755 }, put("l/x")], 0).unwrap();
        // Removing a directory forgets the links under it, and only those.
        let sym = |path: &str| Command::Symlink { path: p(path), target: "t".into() };
        let dir = |path: &str| Command::MakeDir { path: p(path), mode: 0o755 };
        let links = [sym("d/l"), sym("d-x/l"), sym("d0/l"), sym("dd/l")];
        let mut cmds = links.to_vec();
        cmds.extend([Command::Remove { path: p("d") }, dir("d"), dir("d/l"), put("d/l/x")]);
        resign(&cmds, 0).unwrap();
        for kept in ["d-x/l", "d0/l", "dd/l"] {
            let mut cmds = cmds.clone();
            cmds.push(put(&format!("{kept}/x")));
            let err = resign(&cmds, 0).unwrap_err();
            assert!(err.to_string().contains(&format!("through the symlink {kept}")), "{err}");
        }
    }

    #[test]
    fn full_assignments_cannot_reference_a_base() {
        let rename = Command::Rename { from: p("a"), to: p("b"), sha256: Digest::default() };
        assert!(resign(std::slice::from_ref(&rename), 0)
            .unwrap_err()
            .to_string()
            .contains("full assignment"));
        resign(&[rename], 4).unwrap();
        let outside = Command::PutFile {
            path: p("x"),
            meta: FileMeta::default(),
            size: 3,
            sha256: Digest::default(),
            data: DataRef { offset: 5, len: 100, raw_len: 3 },
        };
        assert!(resign(&[outside], 0).unwrap_err().to_string().contains("outside the data part"));
    }

    #[test]
    fn control_assignments_round_trip() {
        let h = Header::control(Kind::Commit, site(), AssignmentSerial(9), JobId(3), 42);
        let bytes = encode_control(&h);
        assert_eq!(bytes.len(), HEADER_LEN + TRAILER_LEN);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.header, h);
        assert!(d.commands.is_empty());
    }

    fn arb_path() -> impl Strategy<Value = SitePath> {
        proptest::collection::vec("[a-zA-Z0-9 ._ü-]{1,12}", 1..4)
            .prop_filter_map("normal", |parts| SitePath::new(&parts.join("/")).ok())
    }

    fn arb_meta() -> impl Strategy<Value = FileMeta> {
        (0..=MODE_MASK, any::<i64>(), 0..1_000_000_000u32)
            .prop_map(|(mode, secs, nanos)| FileMeta { mode, mtime: Mtime { secs, nanos } })
    }

    fn arb_digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 32]>().prop_map(Digest)
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let data = DataRef { offset: 0, len: 12, raw_len: 3 };
        prop_oneof![
            (arb_path(), 0..=MODE_MASK).prop_map(|(path, mode)| Command::MakeDir { path, mode }),
            (arb_path(), arb_meta(), arb_digest()).prop_map(move |(path, meta, sha256)| Command::PutFile {
                path,
                meta,
                size: 3,
                sha256,
                data
            }),
            // Sizes whose total over 20 commands fits in a u64 (a larger total is refused).
            (arb_path(), arb_path(), arb_digest(), arb_meta(), 0..u64::MAX / 32, arb_digest()).prop_map(
                move |(path, base, base_sha256, meta, size, sha256)| Command::PatchFile {
                    path,
                    base,
                    base_sha256,
                    meta,
                    size,
                    sha256,
                    data
                }
            ),
            arb_path().prop_map(|path| Command::Remove { path }),
            (arb_path(), arb_path(), arb_digest()).prop_map(|(from, to, sha256)| Command::Rename {
                from,
                to,
                sha256
            }),
            (arb_path(), 0..=MODE_MASK, proptest::option::of(arb_meta()))
                .prop_map(|(path, mode, m)| Command::SetMode { path, mode, mtime: m.map(|m| m.mtime) }),
        ]
    }

    proptest! {
        #[test]
        fn commands_round_trip(commands in proptest::collection::vec(arb_command(), 0..20)) {
            let d = resign(&commands, 4).unwrap();
            prop_assert_eq!(d.commands, commands);
            prop_assert_eq!(d.header.base_serial, AssignmentSerial(4));
        }

        #[test]
        fn sections_round_trip(content in proptest::collection::vec(any::<u8>(), 0..3000), compress: bool, encrypt: bool) {
            let key = ContentKey::from_secret(&[1u8; 32]).unwrap();
            let key = encrypt.then_some(&key);
            let mut w = AssignmentWriter::new(Cursor::new(Vec::new()), params(3, 0), key.map(|k| (k, [2u8; 32]))).unwrap();
            let (data, _) = w.add_section(&mut &content[..], compress).unwrap();
            let bytes = w.finish().unwrap().1.into_inner();
            let d = decode(&bytes).unwrap();
            prop_assert_eq!(read_section(&bytes, &d, data, key).unwrap(), content);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn random_bodies_behind_a_valid_hash_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400), count in 0u32..20) {
            let mut h = Header::control(Kind::Content, site(), AssignmentSerial(2), JobId(0), 0);
            h.base_serial = AssignmentSerial(1);
            h.command_count = count.min(body.len() as u32);
            h.body_len = body.len() as u64;
            let head = h.encode();
            let mut file = head.to_vec();
            file.extend_from_slice(&body);
            file.extend_from_slice(&encode_trailer(&head, &body));
            let _ = decode(&file);
        }

        #[test]
        fn random_chunks_never_panic(stored in proptest::collection::vec(any::<u8>(), 0..300), raw_len in 0u64..5000) {
            let data = DataRef { offset: 0, len: stored.len() as u64, raw_len };
            let mut r = SectionReader::new(&stored[..], data, AssignmentSerial(1), None);
            let _ = r.read_to_end(&mut Vec::new());
        }
    }
}
