//! Assignment files over HTTP, the serving side: a stored copy served with
//! `Range`, plus the names and the hash that both ends share. The download
//! client is [`crate::net::fetch`].
//!
//! The CCM serves the assignments it created with [`serve_assignment`] just
//! as a group leader serves the copies it holds. Authentication is the
//! caller's: the route handler takes the `Signed` extractor (a GET's body is
//! empty, its signature covers the path).
//!
//! Copies are stored as `<dir>/<id>.cma` ([`assignment_path`], owned by
//! [`crate::storage::assignment_file`]).

use std::io;
use std::path::Path;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::protocol::api::ErrorBody;
use crate::protocol::ids::AssignmentId;
use crate::storage::assignment_file::assignment_path;

/// Bytes read from disk per chunk of a served file.
const CHUNK: usize = 64 * 1024;

/// The node API path of assignment `id`.
pub fn assignment_url_path(id: AssignmentId) -> String {
    format!("/node/v1/assignments/{id}")
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole file (no header, or one this server ignores, as RFC 9110 allows).
    Whole,
    /// Bytes `start ..= end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Nothing of the file can be served: 416.
    Unsatisfiable,
}

/// Parses a single-range `Range` header (`bytes=a-b`, `bytes=a-`,
/// `bytes=-n`). Multiple ranges and other units get the whole file.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // Suffix: the last n bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeAsk::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => a.parse::<u64>().ok().map(|s| (s, len.saturating_sub(1))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeAsk::Whole,
        Some((start, _)) if start >= len => RangeAsk::Unsatisfiable,
        Some((start, end)) => RangeAsk::Part { start, end },
    }
}

fn error(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody { error: message, field: None })
}

/// Serves the copy of assignment `id` held in `dir`: `200` with the whole
/// file, `206` with the range a `Range` header asks for, `416` for a range
/// beyond its end, `404` when no copy is held. The file is streamed from
/// disk a chunk at a time.
pub async fn serve_assignment(dir: &Path, id: AssignmentId, req: &HttpRequest) -> HttpResponse {
    serve_file(&assignment_path(dir, id), &format!("assignment {id}"), req).await
}

/// Serves the file at `path` (named `what` in error answers) with `Range`
/// support, as [`serve_assignment`] does, for callers that name their
/// files differently.
pub async fn serve_file(path: &Path, what: &str, req: &HttpRequest) -> HttpResponse {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return error(StatusCode::NOT_FOUND, format!("{what} is not held here"))
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot open {what}: {e}")),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {what}: {e}")),
    };
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range, len) {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1 - start),
        RangeAsk::Unsatisfiable => {
            return HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((header::CONTENT_RANGE, format!("bytes */{len}")))
                .finish()
        }
    };
    if start > 0 {
        if let Err(e) = file.seek(io::SeekFrom::Start(start)).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read {what}: {e}"));
        }
    }
    let reader = Some(file.take(count));
    let stream = futures_util::stream::unfold(reader, |reader| async move {
        let mut r = reader?;
        let mut buf = vec![0u8; CHUNK];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, io::Error>(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .no_chunking(count);
    if status == StatusCode::PARTIAL_CONTENT {
        resp.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", start + count - 1)));
    }
    resp.streaming(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range(None, 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=2-"), 10), RangeAsk::Part { start: 2, end: 9 });
        assert_eq!(parse_range(Some("bytes=2-4"), 10), RangeAsk::Part { start: 2, end: 4 });
        assert_eq!(parse_range(Some("bytes=2-40"), 10), RangeAsk::Part { start: 2, end: 9 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeAsk::Part { start: 7, end: 9 });
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeAsk::Part { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=1-2,4-5"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("items=1-2"), 10), RangeAsk::Whole);
    }
}
