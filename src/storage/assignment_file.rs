//! An assignment file on disk, verified before use.
//!
//! [`AssignmentFile::open`] reads the header, checks the file's length
//! against it, checks the trailer hash over header and body, decodes and
//! validates the commands, and streams the data part through SHA-256: only
//! then does it return. Sections are read later with positioned reads, one
//! chunk in memory at a time.

// Sizes and counts here come from the network or the disk: no silent
// truncation (tests may build what they like).
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::protocol::assignment::{
    cipher_for, decode_body, Command, DataRef, FormatError, Header, SectionReader, HEADER_LEN, TRAILER_LEN,
};
use crate::protocol::crypto::{ChunkCipher, ContentKey, Sha256};
use crate::protocol::ids::AssignmentId;

/// Extension of a stored assignment copy.
pub const EXTENSION: &str = "cma";

/// Where the copy of assignment `id` is stored in `dir` (`<id>.cma`): the
/// one place that knows the name, for the CCM that creates it, the node
/// API that serves it and the agents that fetch and apply it.
pub fn assignment_path(dir: &Path, id: AssignmentId) -> PathBuf {
    dir.join(format!("{id}.{EXTENSION}"))
}

/// Size and SHA-256 of an assignment copy, read through a fixed buffer.
pub fn hash_copy(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut f = File::open(path)?;
    let mut h = Sha256::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((size, h.finish()));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// An assignment file could not be used.
#[derive(Debug, Error)]
pub enum AssignmentError {
    /// Reading failed.
    #[error("cannot read assignment {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The content is not a valid assignment, or the key is wrong.
    #[error("assignment {path} rejected: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FormatError,
    },
}

/// A verified assignment file. See the module docs.
#[derive(Debug)]
pub struct AssignmentFile {
    path: PathBuf,
    file: File,
    len: u64,
    /// The header.
    pub header: Header,
    /// The commands, validated.
    pub commands: Vec<Command>,
    cipher: Option<ChunkCipher>,
}

/// Positioned reads of a byte range of a file, without moving a shared offset.
pub struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl AssignmentFile {
    /// Opens and fully verifies `path`. A wrong `key` is an error here; a
    /// missing key for an encrypted assignment only when its sections are read
    /// (so that `inspect` works without the key).
    pub fn open(path: &Path, key: Option<&ContentKey>) -> Result<Self, AssignmentError> {
        let io = |source| AssignmentError::Io { path: path.to_owned(), source };
        let format = |source| AssignmentError::Format { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            return Err(format(FormatError::Length { expected: HEADER_LEN as u64, actual: len }));
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let header = Header::decode(&head).map_err(format)?;
        if header.total_len() != len {
            return Err(format(FormatError::Length { expected: header.total_len(), actual: len }));
        }
        // Bounded by MAX_BODY_LEN in Header::decode.
        let body_len = usize::try_from(header.body_len).unwrap_or(usize::MAX);
        let mut body = vec![0u8; body_len.saturating_add(TRAILER_LEN)];
        file.read_exact_at(&mut body, header.body_offset()).map_err(io)?;
        let (body, trailer) = body.split_at(body_len);
        let commands = decode_body(&header, &head, body, trailer).map_err(format)?;
        let cipher = match cipher_for(&header, key) {
            Ok(c) => c,
            Err(FormatError::KeyRequired { .. }) => None,
            Err(e) => return Err(format(e)),
        };
        let mut hash = Sha256::default();
        let mut range = FileRange { file: &file, pos: HEADER_LEN as u64, end: header.body_offset() };
        io::copy(&mut range, &mut hash).map_err(io)?;
        let actual = hash.digest();
        if actual != header.data_sha256 {
            return Err(format(FormatError::DataCorrupted { expected: header.data_sha256, actual }));
        }
        Ok(AssignmentFile { path: path.to_owned(), file, len, header, commands, cipher })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a file of zero length (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fails if the sections cannot be read for want of a key.
    pub fn ensure_readable(&self) -> Result<(), AssignmentError> {
        match (&self.header.encryption, &self.cipher) {
            (Some(e), None) => Err(AssignmentError::Format {
                path: self.path.clone(),
                source: FormatError::KeyRequired { key_id: hex::encode(e.key_id) },
            }),
            _ => Ok(()),
        }
    }

    /// A reader of a section's raw bytes.
    pub fn section(&self, data: &DataRef) -> SectionReader<'_, FileRange<'_>> {
        let start = HEADER_LEN as u64 + data.offset;
        let range = FileRange { file: &self.file, pos: start, end: start + data.len };
        SectionReader::new(range, *data, self.header.serial, self.cipher.as_ref())
    }
}
