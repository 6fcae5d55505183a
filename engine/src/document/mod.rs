//! [`Document`]: one Yjs document, named grow-only counters and named LWW registers, and the
//! [`Delta`]s that carry changes between replicas.

use std::collections::BTreeMap;
use std::panic::catch_unwind;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Options, ReadTxn, StateVector, TextRef, Transact};

use crate::yjs::{TypeIndex, UpdateCheckError, check_state_vector_v1};
use crate::{GCounter, HlcTimestamp, LwwRegister, ReplicaId, Value};

mod apply;
mod json;
mod restore;

use apply::{Held, check_and_decode};
pub use apply::{MAX_HELD_BYTES, Source, Trust};
pub use restore::{CounterNotRestored, RestoreError, RestoreReport};

/// Longest counter or register name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A change to a document, or a whole document: what replicas exchange.
///
/// - `yjs`: a Yjs update in the v1 encoding (empty when the delta has no Yjs part);
/// - `counters`: for each named counter, the per-replica counts being announced (absolute
///   counts, merged by maximum, so resending a delta is harmless);
/// - `registers`: for each named register, the write being announced with its stamp.
///
/// **Invariant:** applying deltas is commutative, associative and idempotent, so deltas may be
/// delivered in any order, more than once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// One Yjs update, v1 encoding; empty when the delta changes no Yjs content.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub yjs: Vec<u8>,
    /// Counter name (at most [`MAX_NAME_BYTES`]) → the replicas' absolute counts announced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, GCounter>,
    /// Register name (at most [`MAX_NAME_BYTES`]) → the stamped write announced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registers: BTreeMap<String, LwwRegister<Value>>,
}

/// What a replica holds, in summary: enough for another replica to compute exactly what it lacks.
///
/// - `yjs`: the Yjs state vector, v1 encoding (empty = nothing);
/// - `counters`: the per-replica counts it holds for each counter;
/// - `registers`: the stamp of the write it holds for each register.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocState {
    /// The Yjs state vector, v1 encoding; empty means no Yjs content. Deletions do not show in
    /// it, so a diff against it carries the whole delete set.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub yjs: Vec<u8>,
    /// Counter name → the per-replica counts held.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, GCounter>,
    /// Register name → the stamp of the write held.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registers: BTreeMap<String, HlcTimestamp>,
}

/// Why a delta, state or snapshot was refused. Nothing is changed when one is returned, except
/// for [`ApplyError::Integrate`], after which the document is poisoned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The Yjs bytes (update or state vector) fail the structural check,
    /// [`check_update_v1`](crate::yjs::check_update_v1) or
    /// [`check_state_vector_v1`](crate::yjs::check_state_vector_v1).
    #[error("invalid Yjs bytes: {0}")]
    Check(#[from] UpdateCheckError),
    /// The Yjs bytes pass the check but yrs cannot decode or merge them, or the update is
    /// inconsistent (an item whose parent is not a shared type, a client listed twice).
    #[error("Yjs bytes do not decode: {reason}")]
    Decode {
        /// What yrs or the plan reported.
        reason: String,
    },
    /// A counter or register name longer than [`MAX_NAME_BYTES`].
    #[error("{what} name is {len} bytes, the limit is {MAX_NAME_BYTES}")]
    NameTooLong {
        /// `"counter"` or `"register"`.
        what: &'static str,
        /// The name's length in bytes.
        len: usize,
    },
    /// yrs failed (or panicked) half-way through integrating an update. The document may hold
    /// part of it, so it refuses all further work; the owner reloads it from the store.
    #[error("Yjs update could not be integrated ({reason}); the document must be reloaded")]
    Integrate {
        /// What yrs reported, or the panic message.
        reason: String,
    },
    /// An earlier [`ApplyError::Integrate`] poisoned the document; it refuses everything until
    /// it is reloaded (from a snapshot or the store).
    #[error("the document was poisoned by an earlier failure and must be reloaded")]
    Poisoned,
    /// A trusted delta would be held back for missing clocks, but the held updates already
    /// reach [`MAX_HELD_BYTES`].
    #[error("more than {limit} bytes of updates wait for missing history; refusing more")]
    TooMuchHeld {
        /// The limit in bytes ([`MAX_HELD_BYTES`]).
        limit: usize,
    },
    /// The Yjs update builds on (or deletes) clock `clock` of client `client`, which the
    /// document does not hold. A peer's update must be integrable whole when it arrives
    /// ([`Trust::Peer`]); the peer should resync, which sends what it builds on along with it.
    #[error(
        "the update builds on client {client} clock {clock}, which the document does not hold; resync"
    )]
    MissingDependencies {
        /// The client whose clock is missing.
        client: u32,
        /// The first missing clock.
        clock: u32,
    },
    /// A shared type would be nested deeper than [`crate::yjs::MAX_TYPE_DEPTH`].
    #[error(
        "shared types nested {depth} deep at client {client} clock {clock}; the limit is {}",
        crate::yjs::MAX_TYPE_DEPTH
    )]
    TooDeep {
        /// The client of the struct that would land too deep.
        client: u32,
        /// Its clock.
        clock: u32,
        /// The depth it would land at (a root type is depth 1).
        depth: u32,
    },
    /// The delta adds content under a client id (or a counter or register replica id) that
    /// another principal introduced in this document ([`Trust::Peer`]).
    #[error("client id {client} belongs to another user of this document")]
    ClientIdTaken {
        /// The client id (or replica id) claimed.
        client: u32,
    },
}

/// A local edit that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// A text offset past the end of the text; nothing was changed.
    #[error("position {index} is past the end of text {name:?} (length {len} UTF-16 units)")]
    OutOfRange {
        /// The text's name.
        name: String,
        /// The offending offset in UTF-16 code units: the insert position, or the end of the
        /// range to delete (saturated at `u32::MAX`).
        index: u32,
        /// The text's length in UTF-16 code units.
        len: u32,
    },
    /// A text, counter or register name longer than [`MAX_NAME_BYTES`].
    #[error("{what} name is {len} bytes, the limit is {MAX_NAME_BYTES}")]
    NameTooLong {
        /// `"text"`, `"counter"` or `"register"`.
        what: &'static str,
        /// The name's length in bytes.
        len: usize,
    },
    /// An earlier failure poisoned the document ([`ApplyError::Integrate`]); reload it.
    #[error("the document was poisoned by an earlier failure and must be reloaded")]
    Poisoned,
    /// A Yjs update made by a bound Yjs document (see [`Document::yjs_local_update`]) was refused.
    #[error("the Yjs update is refused: {0}")]
    Yjs(ApplyError),
}

/// A snapshot that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a MessagePack snapshot.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The snapshot was written in a layout other than [`SNAPSHOT_FORMAT`].
    #[error("snapshot format {found} is not supported (this build reads {SNAPSHOT_FORMAT})")]
    UnsupportedFormat {
        /// The format the snapshot declares.
        found: u32,
    },
    /// The snapshot decodes, but its content does not apply (bad Yjs bytes, a name too
    /// long…).
    #[error("snapshot content is invalid: {0}")]
    Apply(#[from] ApplyError),
}

/// Version of the snapshot layout written by [`Document::snapshot`].
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    content: Delta,
    /// Yjs updates held back for missing clocks; kept so a checkpoint loses nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    held: Vec<serde_bytes::ByteBuf>,
    /// Who introduced each client id: principal → ids (see [`Source::author`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    owners: BTreeMap<String, Vec<u32>>,
}

/// Result of applying a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Whether the delta brought anything the document did not already hold.
    pub changed: bool,
}

fn check_name(what: &'static str, name: &str) -> Result<(), ApplyError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(ApplyError::NameTooLong {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

fn panic_reason(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, ApplyError> {
    if bytes.is_empty() {
        return Ok(StateVector::default());
    }
    check_state_vector_v1(bytes)?;
    StateVector::decode_v1(bytes).map_err(|e| ApplyError::Decode {
        reason: e.to_string(),
    })
}

impl Delta {
    /// Whether the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.yjs.is_empty() && self.counters.is_empty() && self.registers.is_empty()
    }

    /// Checks everything about the delta that can be checked without a document: bounded,
    /// decodable Yjs bytes with 32-bit client ids, and name lengths.
    pub fn validate(&self) -> Result<(), ApplyError> {
        if !self.yjs.is_empty() {
            check_and_decode(&self.yjs)?;
        }
        self.counters
            .keys()
            .try_for_each(|n| check_name("counter", n))?;
        self.registers
            .keys()
            .try_for_each(|n| check_name("register", n))
    }

    /// The latest register stamp in the delta, for drift checks.
    pub fn max_stamp(&self) -> Option<HlcTimestamp> {
        self.registers.values().map(LwwRegister::stamp).max()
    }

    /// Compacts deltas into one with the same effect as applying them all, in any order.
    pub fn merge<'a>(deltas: impl IntoIterator<Item = &'a Delta>) -> Result<Delta, ApplyError> {
        let mut out = Delta::default();
        let mut updates: Vec<&[u8]> = Vec::new();
        for d in deltas {
            d.validate()?;
            if !d.yjs.is_empty() {
                updates.push(&d.yjs);
            }
            for (name, counter) in &d.counters {
                out.counters.entry(name.clone()).or_default().merge(counter);
            }
            for (name, reg) in &d.registers {
                match out.registers.get_mut(name) {
                    Some(existing) => {
                        existing.merge(reg);
                    }
                    None => {
                        out.registers.insert(name.clone(), reg.clone());
                    }
                }
            }
        }
        out.yjs = match updates.len() {
            0 => Vec::new(),
            1 => updates[0].to_vec(),
            _ => catch_unwind(|| yrs::merge_updates_v1(updates.iter().copied()))
                .map_err(|p| ApplyError::Decode {
                    reason: panic_reason(p.as_ref()),
                })?
                .map_err(|e| ApplyError::Decode {
                    reason: e.to_string(),
                })?,
        };
        Ok(out)
    }
}

/// A replica of one document.
///
/// **Invariants:** the Yjs client id is the replica id (32-bit, see [`ReplicaId`]); text offsets
/// count UTF-16 code units, as Yjs in the browser does; [`Document::apply`] either applies a
/// whole delta or changes nothing, except when yrs fails half-way, which poisons the document.
pub struct Document {
    replica: ReplicaId,
    ydoc: Doc,
    counters: BTreeMap<String, GCounter>,
    registers: BTreeMap<String, LwwRegister<Value>>,
    /// Trusted Yjs updates that build on clocks this replica lacks (see [`Trust`]).
    held: Vec<Held>,
    held_bytes: usize,
    held_replans: u64,
    /// Where every clock yrs holds sits in the tree of shared types.
    index: TypeIndex,
    /// The principal that introduced each client id (Yjs clients and CRDT replicas).
    owners: BTreeMap<u32, Arc<str>>,
    poisoned: bool,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("replica", &self.replica)
            .field("counters", &self.counters.len())
            .field("registers", &self.registers.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Document {
    /// An empty document replicated by `replica`.
    pub fn new(replica: ReplicaId) -> Self {
        let options = Options {
            client_id: yrs::block::ClientID::new(u64::from(replica.get())),
            offset_kind: yrs::OffsetKind::Utf16,
            ..Options::default()
        };
        Self {
            replica,
            ydoc: Doc::with_options(options),
            counters: BTreeMap::new(),
            registers: BTreeMap::new(),
            held: Vec::new(),
            held_bytes: 0,
            held_replans: 0,
            index: TypeIndex::default(),
            owners: BTreeMap::new(),
            poisoned: false,
        }
    }

    /// The replica id this document's own edits are made under (its Yjs client id).
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The underlying Yjs document, for bridges that speak Yjs directly: to observe it. Change
    /// it only through this type ([`Document::yjs_local_update`] and the edit methods), which
    /// keep the checks on what it holds in step.
    pub fn ydoc(&self) -> &Doc {
        &self.ydoc
    }

    /// Whether a failure half-way through integrating an update ([`ApplyError::Integrate`])
    /// left the document unusable; it then refuses every change and diff until reloaded.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Applies a trusted delta: [`Document::apply_from`] with [`Source::trusted`] and no
    /// author. Replicas apply what their server sends this way.
    pub fn apply(&mut self, delta: &Delta) -> Result<Applied, ApplyError> {
        self.apply_from(delta, Source::trusted(None))
    }

    /// Merges the counters and registers of a delta (after its Yjs part).
    fn apply_crdt_maps(&mut self, delta: &Delta, mut changed: bool) -> Result<Applied, ApplyError> {
        for (name, counter) in &delta.counters {
            changed |= self
                .counters
                .entry(name.clone())
                .or_default()
                .merge(counter);
        }
        for (name, reg) in &delta.registers {
            match self.registers.get_mut(name) {
                Some(existing) => changed |= existing.merge(reg),
                None => {
                    self.registers.insert(name.clone(), reg.clone());
                    changed = true;
                }
            }
        }
        Ok(Applied { changed })
    }

    /// A summary of what this replica holds.
    pub fn state(&self) -> DocState {
        let sv = self.ydoc.transact().state_vector();
        DocState {
            yjs: if sv.is_empty() {
                Vec::new()
            } else {
                sv.encode_v1()
            },
            counters: self.counters.clone(),
            registers: crate::ordered::map(
                self.registers.iter().map(|(n, r)| (n.clone(), r.stamp())),
            ),
        }
    }

    /// The smallest delta that brings a replica holding `known` up to this one.
    pub fn diff_since(&self, known: &DocState) -> Result<Delta, ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Poisoned);
        }
        let sv = decode_state_vector(&known.yjs)?;
        let txn = self.ydoc.transact();
        let yjs = {
            let mine = txn.state_vector();
            let missing_blocks = mine.iter().any(|(client, clock)| sv.get(client) < *clock);
            // Deletions do not show in a state vector, so the delete set is sent whenever the
            // document has content the other side lacks or any deletion at all.
            if missing_blocks || !txn.snapshot().delete_set.is_empty() {
                txn.encode_state_as_update_v1(&sv)
            } else {
                Vec::new()
            }
        };
        let counters = crate::ordered::map(self.counters.iter().filter_map(|(name, c)| {
            match known.counters.get(name) {
                Some(theirs) => c.missing_from(theirs).map(|m| (name.clone(), m)),
                // A counter the other side lacks is sent even when every count in it is zero,
                // so that both sides list it.
                None => Some((name.clone(), c.clone())),
            }
        }));
        let registers = crate::ordered::map(
            self.registers
                .iter()
                .filter(|(name, r)| known.registers.get(*name).is_none_or(|s| r.stamp() > *s))
                .map(|(n, r)| (n.clone(), r.clone())),
        );
        Ok(Delta {
            yjs,
            counters,
            registers,
        })
    }

    /// The whole document as one self-describing blob (MessagePack), read by
    /// [`Document::from_snapshot`].
    pub fn snapshot(&self) -> Vec<u8> {
        let content = Delta {
            yjs: self
                .ydoc
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
            counters: self.counters.clone(),
            registers: self.registers.clone(),
        };
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            content,
            held: self
                .held
                .iter()
                .map(|h| serde_bytes::ByteBuf::from(h.bytes.clone()))
                .collect(),
            owners: self.owners_by_author(),
        };
        rmp_serde::to_vec_named(&snapshot).unwrap_or_default()
    }

    /// The whole Yjs document as one update (v1 encoding), which any Yjs client can apply.
    pub fn encode_yjs(&self) -> Vec<u8> {
        self.ydoc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Rebuilds a document from [`Document::snapshot`] output, as replica `replica`.
    pub fn from_snapshot(replica: ReplicaId, bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snapshot: Snapshot = rmp_serde::from_slice(bytes)?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnsupportedFormat {
                found: snapshot.format,
            });
        }
        let mut doc = Document::new(replica);
        doc.restore_owners(snapshot.owners);
        let Delta {
            yjs,
            counters,
            registers,
        } = snapshot.content;
        doc.load_yjs(&yjs)?;
        doc.apply(&Delta {
            yjs: Vec::new(),
            counters,
            registers,
        })?;
        for held in snapshot.held {
            doc.apply(&Delta {
                yjs: held.into_vec(),
                ..Delta::default()
            })?;
        }
        Ok(doc)
    }

    fn text_ref(&self, name: &str) -> Result<TextRef, EditError> {
        if self.poisoned {
            return Err(EditError::Poisoned);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(EditError::NameTooLong {
                what: "text",
                len: name.len(),
            });
        }
        Ok(self.ydoc.get_or_insert_text(name))
    }

    /// Applies a Yjs update (v1) made locally by a Yjs document bound to this one, such as a
    /// JavaScript `Y.Doc` under an editor binding, and returns it as the delta to send. The
    /// update passes the same checks as a peer's.
    pub fn yjs_local_update(&mut self, update: &[u8]) -> Result<Delta, EditError> {
        if self.poisoned {
            return Err(EditError::Poisoned);
        }
        let delta = Delta {
            yjs: update.to_vec(),
            ..Delta::default()
        };
        self.apply(&delta).map_err(EditError::Yjs)?;
        Ok(delta)
    }

    /// The current content of a text (empty if it does not exist).
    pub fn text(&self, name: &str) -> String {
        let txn = self.ydoc.transact();
        txn.get_text(name)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }

    /// Length of a text in UTF-16 code units.
    pub fn text_len(&self, name: &str) -> u32 {
        use yrs::Text;
        let txn = self.ydoc.transact();
        txn.get_text(name).map(|t| t.len(&txn)).unwrap_or(0)
    }

    /// Inserts `chunk` at UTF-16 offset `index` and returns the delta to send.
    pub fn text_insert(&mut self, name: &str, index: u32, chunk: &str) -> Result<Delta, EditError> {
        use yrs::Text;
        let text = self.text_ref(name)?;
        let mut txn = self.ydoc.transact_mut();
        let len = text.len(&txn);
        if index > len {
            return Err(EditError::OutOfRange {
                name: name.to_owned(),
                index,
                len,
            });
        }
        text.insert(&mut txn, index, chunk);
        let yjs = txn.encode_update_v1();
        drop(txn);
        self.index_local(&yjs);
        Ok(Delta {
            yjs,
            ..Delta::default()
        })
    }

    /// Deletes `len` UTF-16 code units at `index` and returns the delta to send.
    pub fn text_delete(&mut self, name: &str, index: u32, len: u32) -> Result<Delta, EditError> {
        use yrs::Text;
        let text = self.text_ref(name)?;
        let mut txn = self.ydoc.transact_mut();
        let have = text.len(&txn);
        if index.checked_add(len).is_none_or(|end| end > have) {
            return Err(EditError::OutOfRange {
                name: name.to_owned(),
                index: index.saturating_add(len),
                len: have,
            });
        }
        text.remove_range(&mut txn, index, len);
        let yjs = txn.encode_update_v1();
        drop(txn);
        self.index_local(&yjs);
        Ok(Delta {
            yjs,
            ..Delta::default()
        })
    }

    /// The value of a counter (zero if it does not exist).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).map_or(0, GCounter::value)
    }

    /// Adds `by` to this replica's share of a counter and returns the delta to send.
    pub fn counter_increment(&mut self, name: &str, by: u64) -> Result<Delta, EditError> {
        if self.poisoned {
            return Err(EditError::Poisoned);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(EditError::NameTooLong {
                what: "counter",
                len: name.len(),
            });
        }
        let counter = self.counters.entry(name.to_owned()).or_default();
        let count = counter.increment(self.replica, by);
        let mut announced = GCounter::new();
        announced.increment(self.replica, count);
        Ok(Delta {
            counters: BTreeMap::from([(name.to_owned(), announced)]),
            ..Delta::default()
        })
    }

    /// The value of a register, if it was ever written.
    pub fn register(&self, name: &str) -> Option<&Value> {
        self.registers.get(name).map(LwwRegister::value)
    }

    /// Writes a register with a stamp from this replica's [`Hlc`](crate::Hlc) and returns the
    /// delta to send. A stamp older than the current write loses, as it would anywhere else.
    pub fn register_set(
        &mut self,
        name: &str,
        value: Value,
        stamp: HlcTimestamp,
    ) -> Result<Delta, EditError> {
        if self.poisoned {
            return Err(EditError::Poisoned);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(EditError::NameTooLong {
                what: "register",
                len: name.len(),
            });
        }
        let write = LwwRegister::new(value, stamp);
        match self.registers.get_mut(name) {
            Some(existing) => {
                existing.merge(&write);
            }
            None => {
                self.registers.insert(name.to_owned(), write.clone());
            }
        }
        Ok(Delta {
            registers: BTreeMap::from([(name.to_owned(), write)]),
            ..Delta::default()
        })
    }
}
