//! Newtype identifiers, so that a node id can never be passed where a job id
//! or an assignment serial is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

/// Ids (or any values) for people: `1, 2, 4`, or `none`.
pub fn join<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

id_type!(
    /// Identifies one agent (one back-end server) in the cluster. Unique per
    /// cluster; also the last tie-breaker of election priority.
    NodeId
);
id_type!(
    /// Identifies a job in the CCM's database.
    JobId
);
id_type!(
    /// Identifies a run of a job in the CCM's database.
    RunId
);
id_type!(
    /// Identifies one assignment file (content, commit, abort…) cluster-wide.
    AssignmentId
);
id_type!(
    /// The serial number of an assignment. Serials grow per site; a release on
    /// a back-end server is named after the serial that produced it.
    AssignmentSerial
);
