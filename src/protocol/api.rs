//! JSON types of the HTTP APIs, shared by servers and clients, and the
//! signature that authenticates every node-to-node request.
//!
//! # The node API (`/node/v1/…`), and how an assignment travels
//!
//! Every request between nodes (CCM ↔ group leader, leader ↔ leader) carries
//! five headers: [`NODE_HEADER`] (the sender's id, `0` for the CCM),
//! [`TIME_HEADER`] (its Unix time in ms), [`TO_HEADER`] (the node it is for,
//! or [`ANY_NODE`] for a `GET`), [`NONCE_HEADER`] (16 random bytes, hex) and
//! [`SIGNATURE_HEADER`] (hex HMAC-SHA256, keyed from the cluster secret with
//! [`NODE_KEY_LABEL`], over method, path and query, time, sender,
//! destination, nonce and the SHA-256 of the body; see [`signing_input`]). A
//! request unsigned, wrongly signed, stamped outside the allowed clock skew,
//! meant for another node, or seen before (its nonce, see [`NonceCache`])
//! gets `401`: a captured request can be sent again neither to its
//! destination nor to any other node.
//!
//! On the CCM:
//! - `POST /node/v1/segment` ← [`SegmentReport`]: a group leader describes
//!   its segment (on election, on membership change, and periodically).
//! - `GET /node/v1/assignments/{id}`: the assignment file, streamed; `Range`
//!   requests resume a broken transfer.
//! - `POST /node/v1/next-hop` ← [`NextHopRequest`] → [`NextHop`]: a leader
//!   that holds assignment `id` asks whom to forward it to next.
//! - `POST /node/v1/report` ← [`SegmentResult`]: a leader reports the
//!   outcome of assignment `id` in its segment, naming every server.
//!
//! On every agent that may lead (the same routes serve both roles):
//! - `POST /node/v1/notify` ← [`Notify`] → `202` (or `409` with
//!   [`NotLeader`] when this node does not lead its segment now): fetch
//!   assignment `id` from `fetch_from`, then forward and deliver it.
//! - `GET /node/v1/assignments/{id}`: a stored copy, for other leaders.
//! - `GET /node/v1/status` → [`NodeStatus`].
//!
//! A notified leader fetches the file (verifying its SHA-256, resuming with
//! `Range`, fetching again if the hash is wrong), then asks the CCM for its
//! next hop and notifies that leader (with itself as `fetch_from`), until
//! the CCM answers `None`; then it multicasts the assignment to its members,
//! applies it itself, collects every member's result and posts one
//! [`SegmentResult`]. Content, commit and abort assignments all travel this
//! way; commit and abort ones are header-only and tiny.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::assignment::Kind;
use super::crypto::{Digest, MacKey};
use super::ids::{AssignmentId, NodeId, RunId};

/// Header with the sender's node id (`0` for the CCM).
pub const NODE_HEADER: &str = "x-cmover-node";
/// Header with the sender's Unix time in milliseconds.
pub const TIME_HEADER: &str = "x-cmover-time";
/// Header with the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-cmover-signature";
/// Header naming the node a request is for.
pub const TO_HEADER: &str = "x-cmover-to";
/// Header with the request's nonce (16 bytes, hex): never accepted twice.
pub const NONCE_HEADER: &str = "x-cmover-nonce";
/// [`TO_HEADER`] of a request for any node: accepted for `GET` only (a read
/// changes nothing, and a leader fetching a copy knows its source by URL).
pub const ANY_NODE: &str = "*";
/// HKDF label of the node API key.
pub const NODE_KEY_LABEL: &str = "node api";
/// The node id the CCM signs with.
pub const CCM_NODE: NodeId = NodeId(0);

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// A header is missing or malformed.
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    /// Stamped too far from the receiver's clock.
    #[error("request time is {skew_ms} ms away from this node's clock (at most {max_ms} allowed)")]
    Skew {
        /// Distance.
        skew_ms: u64,
        /// Allowed.
        max_ms: u64,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Signed for another node (or for any node, on a request that changes something).
    #[error("the request is for node {to}, not this node ({me})")]
    WrongDestination {
        /// The destination it names.
        to: String,
        /// This node.
        me: NodeId,
    },
    /// Its nonce was seen before: a replay.
    #[error("request from node {node} seen before (replayed)")]
    Replayed {
        /// The sender.
        node: NodeId,
    },
    /// More signed requests inside the skew window than are remembered.
    #[error("too many signed requests to remember their nonces; try again shortly")]
    Busy,
}

/// The bytes that are signed. `to` is the destination's id or [`ANY_NODE`].
pub fn signing_input(
    method: &str,
    path_and_query: &str,
    time_ms: u64,
    node: NodeId,
    to: &str,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    format!("{method}\n{path_and_query}\n{time_ms}\n{node}\n{to}\n{nonce}\n{}", Digest::of(body)).into_bytes()
}

/// The header values of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// [`NODE_HEADER`].
    pub node: String,
    /// [`TIME_HEADER`].
    pub time: String,
    /// [`TO_HEADER`].
    pub to: String,
    /// [`NONCE_HEADER`].
    pub nonce: String,
    /// [`SIGNATURE_HEADER`].
    pub signature: String,
}

impl SignedHeaders {
    /// The headers as (name, value) pairs.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            (NODE_HEADER, &self.node),
            (TIME_HEADER, &self.time),
            (TO_HEADER, &self.to),
            (NONCE_HEADER, &self.nonce),
            (SIGNATURE_HEADER, &self.signature),
        ]
    }
}

/// The header values a request came with (`None`: missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// [`NODE_HEADER`].
    pub node: Option<&'a str>,
    /// [`TIME_HEADER`].
    pub time: Option<&'a str>,
    /// [`TO_HEADER`].
    pub to: Option<&'a str>,
    /// [`NONCE_HEADER`].
    pub nonce: Option<&'a str>,
    /// [`SIGNATURE_HEADER`].
    pub signature: Option<&'a str>,
}

/// Signs a request from `node` for `to` (`None`: any node, for a `GET`)
/// with `nonce` (16 random bytes, never used twice).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    key: &MacKey,
    node: NodeId,
    to: Option<NodeId>,
    nonce: [u8; 16],
    now_ms: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> SignedHeaders {
    let to = to.map_or_else(|| ANY_NODE.to_owned(), |t| t.to_string());
    let nonce = hex::encode(nonce);
    let tag = key.sign(&[&signing_input(method, path_and_query, now_ms, node, &to, &nonce, body)]);
    SignedHeaders { node: node.to_string(), time: now_ms.to_string(), to, nonce, signature: hex::encode(tag) }
}

/// A request whose signature verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The sender.
    pub node: NodeId,
    /// Its time stamp, Unix ms.
    pub time_ms: u64,
    /// Its nonce.
    pub nonce: [u8; 16],
}

/// Checks a request's headers against its method, path, body, this node
/// (`me`) and the receiver's clock; answers who sent it. Whether it was
/// seen before is [`NonceCache::admit`]'s part.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    key: &MacKey,
    headers: Presented<'_>,
    me: NodeId,
    now_ms: u64,
    max_skew_ms: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<Verified, AuthError> {
    let node = headers.node.and_then(|v| v.parse::<u64>().ok()).ok_or(AuthError::Header(NODE_HEADER))?;
    let time = headers.time.and_then(|v| v.parse::<u64>().ok()).ok_or(AuthError::Header(TIME_HEADER))?;
    let to = headers.to.ok_or(AuthError::Header(TO_HEADER))?;
    let nonce_text = headers.nonce.ok_or(AuthError::Header(NONCE_HEADER))?;
    let nonce: [u8; 16] = hex::decode(nonce_text)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(AuthError::Header(NONCE_HEADER))?;
    let sig = headers
        .signature
        .and_then(|v| hex::decode(v).ok())
        .filter(|s| s.len() == 32)
        .ok_or(AuthError::Header(SIGNATURE_HEADER))?;
    let skew_ms = time.abs_diff(now_ms);
    if skew_ms > max_skew_ms {
        return Err(AuthError::Skew { skew_ms, max_ms: max_skew_ms });
    }
    let node = NodeId(node);
    if !key.verify(&[&signing_input(method, path_and_query, time, node, to, nonce_text, body)], &sig) {
        return Err(AuthError::BadSignature);
    }
    let for_me = to == me.to_string() || (to == ANY_NODE && method == "GET");
    if !for_me {
        return Err(AuthError::WrongDestination { to: to.to_owned(), me });
    }
    Ok(Verified { node, time_ms: time, nonce })
}

/// The nonces of the signed requests accepted within the clock-skew
/// window (older ones fail the time check anyway): a request is accepted
/// once. At most [`NonceCache::MAX`] are remembered.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: std::collections::HashMap<(NodeId, [u8; 16]), u64>,
}

impl NonceCache {
    /// Most nonces remembered.
    pub const MAX: usize = 200_000;

    /// Accepts `v` unless its nonce was seen before; `now_ms` and
    /// `max_skew_ms` as given to [`verify`].
    pub fn admit(&mut self, now_ms: u64, max_skew_ms: u64, v: &Verified) -> Result<(), AuthError> {
        if self.seen.contains_key(&(v.node, v.nonce)) {
            return Err(AuthError::Replayed { node: v.node });
        }
        if self.seen.len() >= Self::MAX {
            self.seen.retain(|_, t| t.saturating_add(max_skew_ms) >= now_ms);
            if self.seen.len() >= Self::MAX {
                return Err(AuthError::Busy);
            }
        }
        self.seen.insert((v.node, v.nonce), v.time_ms);
        Ok(())
    }
}

/// One server of a segment, as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// The server.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its node HTTP address (`host:port`), possibly empty.
    pub http: String,
    /// Live serial per site.
    pub live: BTreeMap<String, u64>,
}

/// `POST /node/v1/segment`: a leader describes its segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// The segment's name (from the leader's configuration).
    pub segment: String,
    /// The leader.
    pub leader: NodeId,
    /// The leader's node HTTP address (`host:port`).
    pub leader_http: String,
    /// The leader process's incarnation: a random number drawn when it
    /// starts, so the CCM sees a leader that restarted (and lost the jobs it
    /// had acknowledged) even at the same address.
    #[serde(default)]
    pub incarnation: u64,
    /// Where the segment is (free text, e.g. a data centre or time zone).
    pub location: String,
    /// CPU cores of the leader.
    pub cpus: u32,
    /// Free bytes on the leader's data disk.
    pub disk_free: u64,
    /// Every online server, the leader included.
    pub members: Vec<MemberReport>,
}

/// What an assignment is, as the node API refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRef {
    /// Cluster-wide id of this assignment file (content, commit and abort
    /// assignments of one run have different ids).
    pub id: AssignmentId,
    /// The site.
    pub site: String,
    /// The release serial it concerns.
    pub serial: u64,
    /// What it does.
    pub kind: Kind,
    /// Size of the file in bytes.
    pub size: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

/// `POST /node/v1/notify`: fetch an assignment and pass it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// The assignment.
    pub assignment: AssignmentRef,
    /// Base URL of a holder (`http://host:port`) to fetch it from.
    pub fetch_from: String,
    /// The run it belongs to.
    pub run: RunId,
    /// The servers of the notified segment that must receive it (the
    /// run's targets there); a notify that names none is refused.
    pub targets: Vec<NodeId>,
    /// The job's bandwidth limit, bytes per second: fetches of this
    /// assignment go no faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u64>,
}

/// `409` answer to a notify: this node does not lead its segment now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotLeader {
    /// The leader it knows, if any.
    pub leader: Option<NodeId>,
}

/// `POST /node/v1/next-hop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopRequest {
    /// The assignment the asker now holds.
    pub assignment: AssignmentId,
}

/// A leader to notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopTarget {
    /// The leader.
    pub node: NodeId,
    /// Its base URL (`http://host:port`).
    pub url: String,
    /// What to send it.
    pub notify: Notify,
}

/// Answer to `next-hop`: the next leader to notify, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    /// The next target, or `None` when this holder is done forwarding.
    pub target: Option<HopTarget>,
}

/// What happened to an assignment on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ServerOutcome {
    /// Applied (content), switched (commit), discarded (abort).
    Succeeded,
    /// It failed; the error says why.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// No report came.
    Silent,
}

/// `POST /node/v1/report`: the outcome of an assignment in a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentResult {
    /// The assignment.
    pub assignment: AssignmentId,
    /// The run.
    pub run: RunId,
    /// The segment.
    pub segment: String,
    /// Its leader.
    pub leader: NodeId,
    /// One entry per targeted server (the leader included when targeted).
    pub servers: BTreeMap<NodeId, ServerOutcome>,
    /// How the multicast in the segment went (none when nothing was multicast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStats>,
}

/// Where a leader is with an assignment, as it reports it while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LivePhase {
    /// Fetching the copy from its holder.
    #[default]
    Fetching,
    /// Holding the copy, passing it on to the next leaders.
    Forwarding,
    /// Multicasting it to the segment's targets.
    Sending,
    /// Every frame is out; the members apply it and report.
    Applying,
}

/// A leader's progress with an assignment, sent now and then while it
/// moves (`POST /node/v1/progress`); the run page and `job run --wait`
/// show it. Cheap: a small body at most once a second per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LiveProgress {
    /// Where it is.
    pub phase: LivePhase,
    /// Bytes of the copy the leader holds.
    pub fetched: u64,
    /// The assignment's size.
    pub size: u64,
    /// Frames in the assignment (0 before the multicast starts).
    pub frames: u32,
    /// Multicast passes ended.
    pub passes: u32,
    /// Frames still missing at some target after the last pass.
    pub missing: u32,
    /// Targets still receiving.
    pub receiving: u32,
    /// Targets of the segment.
    pub targets: u32,
}

/// `POST /node/v1/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// The assignment.
    pub assignment: AssignmentId,
    /// The run.
    pub run: RunId,
    /// The segment.
    pub segment: String,
    /// Its leader.
    pub leader: NodeId,
    /// How far it is.
    pub progress: LiveProgress,
}

/// What moving one assignment through a segment's multicast took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeliveryStats {
    /// The assignment's size.
    pub bytes: u64,
    /// Frames in the assignment.
    pub frames_needed: u32,
    /// Frames sent, all passes together.
    pub frames_sent: u64,
    /// Passes (the first transmission and each retransmission round).
    pub passes: u32,
}

/// `GET /node/v1/status`: what an agent knows about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its segment.
    pub segment: String,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Live serial per site.
    pub live: BTreeMap<String, u64>,
    /// Assignment ids it holds a verified copy of.
    pub held: Vec<u64>,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(h: &SignedHeaders) -> Presented<'_> {
        Presented {
            node: Some(&h.node),
            time: Some(&h.time),
            to: Some(&h.to),
            nonce: Some(&h.nonce),
            signature: Some(&h.signature),
        }
    }

    #[test]
    fn signatures_bind_method_path_time_node_destination_nonce_and_body() {
        let key = MacKey::derive(b"cluster secret cluster secret", NODE_KEY_LABEL);
        let me = NodeId(0);
        let signed = sign(&key, NodeId(4), Some(me), [7; 16], 1_000_000, "POST", "/node/v1/report", b"{}");
        let h = presented(&signed);
        let ok = verify(&key, h, me, 1_000_500, 30_000, "POST", "/node/v1/report", b"{}").unwrap();
        assert_eq!((ok.node, ok.time_ms, ok.nonce), (NodeId(4), 1_000_000, [7; 16]));
        let bad = |m: &str, p: &str, b: &[u8], now: u64| verify(&key, h, me, now, 30_000, m, p, b);
        assert_eq!(bad("GET", "/node/v1/report", b"{}", 1_000_000), Err(AuthError::BadSignature));
        assert_eq!(bad("POST", "/node/v1/notify", b"{}", 1_000_000), Err(AuthError::BadSignature));
        assert_eq!(bad("POST", "/node/v1/report", b"{ }", 1_000_000), Err(AuthError::BadSignature));
        assert!(matches!(bad("POST", "/node/v1/report", b"{}", 1_040_000), Err(AuthError::Skew { .. })));
        let other = MacKey::derive(b"another secret another secret", NODE_KEY_LABEL);
        assert_eq!(
            verify(&other, h, me, 1_000_000, 30_000, "POST", "/node/v1/report", b"{}"),
            Err(AuthError::BadSignature)
        );
        for forged in [
            Presented { node: Some("5"), ..h },
            Presented { to: Some("3"), ..h },
            Presented { nonce: Some("08080808080808080808080808080808"), ..h },
        ] {
            assert_eq!(
                verify(&key, forged, me, 1_000_000, 30_000, "POST", "/node/v1/report", b"{}"),
                Err(AuthError::BadSignature)
            );
        }
        assert_eq!(
            verify(&key, Presented { node: None, ..h }, me, 1_000_000, 30_000, "POST", "/", b""),
            Err(AuthError::Header(NODE_HEADER))
        );
    }

    /// Issue 15 item 7: a signed request was accepted again for ±30 s, on
    /// any host. Now it is for one node, and accepted once.
    #[test]
    fn a_request_is_for_one_node_and_accepted_once() {
        let key = MacKey::derive(b"cluster secret cluster secret", NODE_KEY_LABEL);
        let notify = sign(&key, NodeId(0), Some(NodeId(3)), [1; 16], 1_000, "POST", "/node/v1/notify", b"{}");
        let at = |me: u64| {
            verify(&key, presented(&notify), NodeId(me), 1_000, 30_000, "POST", "/node/v1/notify", b"{}")
        };
        assert_eq!(at(5), Err(AuthError::WrongDestination { to: "3".into(), me: NodeId(5) }), "another host");
        let v = at(3).unwrap();
        let mut seen = NonceCache::default();
        assert_eq!(seen.admit(1_000, 30_000, &v), Ok(()));
        assert_eq!(seen.admit(1_200, 30_000, &v), Err(AuthError::Replayed { node: NodeId(0) }), "replayed");
        // "Any node" is for reads only.
        let post = sign(&key, NodeId(0), None, [2; 16], 1_000, "POST", "/node/v1/notify", b"{}");
        let err = verify(&key, presented(&post), NodeId(3), 1_000, 30_000, "POST", "/node/v1/notify", b"{}");
        assert!(matches!(err, Err(AuthError::WrongDestination { .. })));
        let get = sign(&key, NodeId(4), None, [3; 16], 1_000, "GET", "/node/v1/status", b"");
        assert!(
            verify(&key, presented(&get), NodeId(3), 1_000, 30_000, "GET", "/node/v1/status", b"").is_ok()
        );
    }
}
