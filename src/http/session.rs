//! Who may call the admin REST API: automation with the bearer token
//! (`ccm.admin_token`), people through a login session (the web UI).
//!
//! A login (`POST /api/v1/session`) checks the password against its
//! PBKDF2-HMAC-SHA256 hash and sets an `HttpOnly; SameSite=Strict` cookie
//! holding a random token; the database keeps only the token's SHA-256. The
//! answer carries a CSRF token that every change made with the cookie must
//! send back in `x-csrf-token`.

use std::num::NonZeroU32;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::Method;
use actix_web::HttpRequest;
use ring::rand::{SecureRandom, SystemRandom};

use super::ccm_api::{ApiError, CcmState};
use crate::clock::unix_ms;
use crate::protocol::crypto::Digest;
use crate::storage::records::{SessionRecord, UserRecord};

/// Name of the session cookie.
pub const COOKIE: &str = "cmover_session";
/// Header that changes made with the cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
pub const SESSION_MS: u64 = 12 * 3600 * 1000;
/// PBKDF2 iterations of new password hashes.
pub const ITERATIONS: u32 = 100_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bearer token.
    Token,
    /// A logged-in user.
    User(String),
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).map_err(|_| ApiError::Internal("no system randomness".into()))?;
    Ok(hex::encode(b))
}

/// Whether `a` and `b` are equal, in a time that depends on neither their
/// contents nor their lengths: both are hashed first (SHA-256), and the
/// digests are compared without an early exit, so a wrong guess tells its
/// sender nothing about how long the secret is or how much of it matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Digest::of(a), Digest::of(b));
    x.0.iter().zip(y.0.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

fn pbkdf2(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, n, salt, password.as_bytes(), &mut out);
    out
}

/// A user record for `name` with a fresh salt and the hash of `password`.
pub fn new_user(name: &str, password: &str) -> Result<UserRecord, ApiError> {
    let salt = random_hex(16)?;
    let hash = pbkdf2(password, salt.as_bytes(), ITERATIONS);
    Ok(UserRecord {
        name: name.into(),
        salt,
        hash: hex::encode(hash),
        iterations: ITERATIONS,
        created_ms: unix_ms(),
    })
}

/// True when `password` is the user's.
pub fn check_password(user: &UserRecord, password: &str) -> bool {
    let hash = pbkdf2(password, user.salt.as_bytes(), user.iterations);
    hex::decode(&user.hash).is_ok_and(|h| same(&h, &hash))
}

/// What a login of a user that does not exist is checked against: the same
/// one hash as a real user's (building a user for it, as was done, hashed
/// twice and took twice as long, telling which names exist).
pub fn decoy_user() -> &'static UserRecord {
    static DECOY: std::sync::OnceLock<UserRecord> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| UserRecord {
        name: String::new(),
        salt: "0".repeat(32),
        hash: "0".repeat(64),
        iterations: ITERATIONS,
        created_ms: 0,
    })
}

/// Checks a login: `user`'s password, or (no such user) the decoy's, so
/// that both take one hash. Blocking (PBKDF2): run it off the HTTP workers.
pub fn check_login(user: Option<&UserRecord>, password: &str) -> bool {
    match user {
        Some(u) => check_password(u, password),
        None => {
            let _ = check_password(decoy_user(), password);
            false
        }
    }
}

fn token_key(token: &str) -> String {
    Digest::of(token.as_bytes()).to_string()
}

/// Starts a session for `user`: the record, the cookie to set.
pub fn open(state: &CcmState, user: &str) -> Result<(SessionRecord, Cookie<'static>), ApiError> {
    let token = random_hex(32)?;
    let rec = SessionRecord {
        token_sha256: token_key(&token),
        user: user.into(),
        csrf: random_hex(16)?,
        expires_ms: unix_ms() + SESSION_MS,
    };
    state.db.table::<SessionRecord>()?.put(&rec)?;
    state.db.flush()?;
    let cookie = Cookie::build(COOKIE, token).path("/").http_only(true).same_site(SameSite::Strict).finish();
    Ok((rec, cookie))
}

/// The caller's live session, if its cookie names one.
pub fn current(req: &HttpRequest, state: &CcmState) -> Result<Option<SessionRecord>, ApiError> {
    let Some(c) = req.cookie(COOKIE) else { return Ok(None) };
    let sessions = state.db.table::<SessionRecord>()?;
    let key = token_key(c.value());
    match sessions.get(&key)? {
        Some(s) if s.expires_ms > unix_ms() => Ok(Some(s)),
        Some(_) => {
            sessions.delete(&key)?;
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Ends the caller's session; returns a cookie that clears it.
pub fn close(req: &HttpRequest, state: &CcmState) -> Result<Cookie<'static>, ApiError> {
    if let Some(c) = req.cookie(COOKIE) {
        state.db.table::<SessionRecord>()?.delete(&token_key(c.value()))?;
        state.db.flush()?;
    }
    let mut gone = Cookie::build(COOKIE, "").path("/").http_only(true).same_site(SameSite::Strict).finish();
    gone.make_removal();
    Ok(gone)
}

/// Checks the bearer token or the session cookie (and, for a change made
/// with the cookie, the CSRF header).
pub fn authorize(req: &HttpRequest, state: &CcmState) -> Result<Caller, ApiError> {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = given {
        if !state.admin_token.is_empty() && same(given.as_bytes(), state.admin_token.as_bytes()) {
            return Ok(Caller::Token);
        }
        return Err(ApiError::Unauthorized(
            "wrong bearer token (Authorization: Bearer <ccm.admin_token>)".into(),
        ));
    }
    if let Some(s) = current(req, state)? {
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        let csrf = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !reads && !same(csrf.as_bytes(), s.csrf.as_bytes()) {
            return Err(ApiError::Forbidden(format!(
                "changes made with a session must carry the {CSRF_HEADER} header the login returned"
            )));
        }
        return Ok(Caller::User(s.user));
    }
    Err(ApiError::Unauthorized(
        "log in (POST /api/v1/session) or send Authorization: Bearer <ccm.admin_token>".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 6: an unknown user took twice as long to refuse as a
    /// known one (two hashes instead of one).
    #[test]
    fn unknown_and_known_users_take_one_hash_each() {
        let u = new_user("ada", "correct horse").unwrap();
        let time = |user: Option<&UserRecord>| {
            // The fastest of several: the least disturbed by a busy machine.
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    assert!(!check_login(user, "wrong"));
                    t.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        let _ = decoy_user();
        let (known, unknown) = (time(Some(&u)), time(None));
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!((0.5..1.6).contains(&ratio), "unknown {unknown:?} vs known {known:?}");
        assert!(check_login(Some(&u), "correct horse"));
    }

    #[test]
    fn comparisons_hash_first_so_lengths_do_not_matter() {
        assert!(same(b"token", b"token"));
        assert!(!same(b"token", b"token "));
        assert!(!same(b"", b"t"));
        assert!(same(b"", b""));
    }

    #[test]
    fn passwords_verify_and_wrong_ones_do_not() {
        let u = new_user("ada", "correct horse").unwrap();
        assert!(check_password(&u, "correct horse"));
        assert!(!check_password(&u, "correct horse "));
        assert!(!check_password(&u, ""));
        let v = new_user("ada", "correct horse").unwrap();
        assert_ne!(u.hash, v.hash, "a fresh salt gives a fresh hash");
    }
}
