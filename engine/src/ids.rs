//! Identifiers that travel on the wire: replicas and documents.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identity of one replica of a document: a browser tab, a native client, the server's restore
/// writer.
///
/// The same number is the Yjs client id of the replica's `yrs` document, its key in every
/// [`GCounter`](crate::GCounter) and the tie-breaker of its [`HlcTimestamp`](crate::HlcTimestamp)s.
///
/// **Invariant:** it fits in 32 bits and is never zero. Stock Yjs clients before v14 generate and
/// expect 32-bit client ids, so every id that enters a Lattice document is 32-bit; updates that
/// carry a wider client id are refused at the door (see [`crate::yjs`]). Zero is reserved because
/// `uhlc` identifiers must be non-zero.
///
/// Ids are chosen at random by the driver (the engine has no randomness); two live replicas that
/// share an id corrupt each other's state, exactly as in Yjs. With random 32-bit ids the chance of
/// any collision among `n` replicas of one document is about `n² / 2³³` (1 in 86,000 for 100).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(NonZeroU32);

impl ReplicaId {
    /// Wraps a non-zero 32-bit id; `None` for zero.
    pub const fn new(id: u32) -> Option<Self> {
        match NonZeroU32::new(id) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    /// Turns arbitrary random bits into a valid id (zero becomes one).
    pub const fn from_random(bits: u32) -> Self {
        match NonZeroU32::new(bits) {
            Some(id) => Self(id),
            None => Self(NonZeroU32::MIN),
        }
    }

    /// The id as a number, never zero.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.get())
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = u32::deserialize(d)?;
        ReplicaId::new(raw).ok_or_else(|| serde::de::Error::custom("replica id must not be zero"))
    }
}

/// Longest document id, in bytes.
pub const MAX_DOC_ID_BYTES: usize = 256;

/// Name of a document, shared by every endpoint (`/v1/sync`, `/yjs/{doc}`, the admin API).
///
/// **Invariant:** 1 to [`MAX_DOC_ID_BYTES`] bytes of `[A-Za-z0-9._~-]` in segments separated by
/// single `/` (`team-a/notes`); no empty segment, no `.` or `..` segment. That keeps ids safe in
/// URL paths, log lines and file names without escaping.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DocId(String);

/// Why a string is not a valid [`DocId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocIdError {
    /// The string is empty.
    #[error("document id is empty")]
    Empty,
    /// The string is longer than [`MAX_DOC_ID_BYTES`].
    #[error("document id is {len} bytes, the limit is {MAX_DOC_ID_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The string holds a character outside `[A-Za-z0-9._~/-]`.
    #[error("document id contains {ch:?}; allowed are letters, digits, '.', '_', '~', '-' and '/'")]
    BadChar {
        /// The first such character.
        ch: char,
    },
    /// A `/`-separated segment is empty (a leading, trailing or doubled `/`), `.` or `..`.
    #[error("document id has an empty, '.' or '..' path segment")]
    BadSegment,
}

impl DocId {
    /// Checks `id` against the rules above; the errors are checked in the order of
    /// [`DocIdError`]'s variants, so an id that breaks several rules reports the first.
    pub fn new(id: impl Into<String>) -> Result<Self, DocIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DocIdError::Empty);
        }
        if id.len() > MAX_DOC_ID_BYTES {
            return Err(DocIdError::TooLong { len: id.len() });
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-' | '/')))
        {
            return Err(DocIdError::BadChar { ch });
        }
        if id
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(DocIdError::BadSegment);
        }
        Ok(Self(id))
    }

    /// The id as it was given (and as it travels on the wire).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({:?})", self.0)
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DocId {
    type Err = DocIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocId::new(s)
    }
}

impl<'de> Deserialize<'de> for DocId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        DocId::new(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids() {
        assert!(DocId::new("notes").is_ok());
        assert!(DocId::new("team-a/notes.v2").is_ok());
        assert_eq!(DocId::new(""), Err(DocIdError::Empty));
        assert_eq!(DocId::new("a//b"), Err(DocIdError::BadSegment));
        assert_eq!(DocId::new("/a"), Err(DocIdError::BadSegment));
        assert_eq!(DocId::new("a/../b"), Err(DocIdError::BadSegment));
        assert_eq!(DocId::new("a b"), Err(DocIdError::BadChar { ch: ' ' }));
        assert!(matches!(
            DocId::new("x".repeat(257)),
            Err(DocIdError::TooLong { len: 257 })
        ));
    }

    #[test]
    fn replica_zero_is_refused() {
        assert!(ReplicaId::new(0).is_none());
        assert_eq!(ReplicaId::from_random(0).get(), 1);
        let err = rmp_serde::from_slice::<ReplicaId>(&[0]).unwrap_err();
        assert!(err.to_string().contains("zero"));
    }
}
