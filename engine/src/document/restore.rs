//! Restoring an earlier version: [`Document::restore_delta`] builds the one delta that brings
//! a document's texts and registers back to it, and reports what it cannot bring back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use yrs::Transact;

use super::{Delta, Document, SnapshotError};
use crate::{HlcTimestamp, LwwRegister, Value};

/// Why a restore delta could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// This document or the target is poisoned ([`Document::is_poisoned`]); reload it and try
    /// again.
    #[error("the document was poisoned by an earlier failure and must be reloaded")]
    Poisoned,
    /// The working copy of this document the restore edits could not be made from its
    /// snapshot.
    #[error("the document could not be copied: {0}")]
    Copy(#[from] SnapshotError),
    /// A text is too long for a 32-bit UTF-16 offset.
    #[error("a text is longer than 2^32 UTF-16 units")]
    TooLarge,
}

/// What [`Document::restore_delta`] restored, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Texts edited back to the version.
    pub texts: Vec<String>,
    /// Registers written back to their value at the version (`null` if they did not exist).
    pub registers: Vec<String>,
    /// Grow-only counters whose value differs: they cannot go down, so they are left as is.
    pub counters_not_restored: BTreeMap<String, CounterNotRestored>,
    /// Maps, arrays and XML roots that differ (`maps/<name>`, …); restore leaves them as is.
    pub not_restored: Vec<String>,
}

/// A counter restore left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterNotRestored {
    /// The counter's value now, which it keeps.
    pub current: u64,
    /// Its value at the version restored (0 if it did not exist then).
    pub at_version: u64,
}

impl Document {
    /// The delta that brings this document's texts and registers back to `target`'s (an
    /// earlier version of the same document), as a change made by this replica: one Yjs
    /// transaction of text edits (a diff per text, [`crate::history::diff_text`]) and a register
    /// write stamped `stamp()` (or just past the current write, if that is later) for every
    /// register whose value differs. This document is not
    /// changed; apply the delta to it (or send it through a room) like any other.
    ///
    /// What cannot be restored is reported, not faked: grow-only counters never go down, so
    /// counters are left as they are and listed in [`RestoreReport::counters_not_restored`];
    /// registers cannot be removed, so one created after `target` is set to `null`; maps,
    /// arrays and XML roots are listed in [`RestoreReport::not_restored`].
    pub fn restore_delta(
        &self,
        target: &Document,
        mut stamp: impl FnMut() -> HlcTimestamp,
    ) -> Result<(Delta, RestoreReport), RestoreError> {
        use yrs::{Text, WriteTxn};
        if self.poisoned || target.poisoned {
            return Err(RestoreError::Poisoned);
        }
        let now = self.to_json();
        let then = target.to_json();
        let summary = crate::history::summarize(&now, &then);
        let mut report = RestoreReport::default();
        // Edits are made on a copy, so that applying the delta to this document changes it.
        let copy = Document::from_snapshot(self.replica, &self.snapshot())?;
        let yjs = {
            let mut txn = copy.ydoc.transact_mut();
            for name in summary.texts.keys() {
                let old = now["texts"][name.as_str()].as_str().unwrap_or("");
                let new = then["texts"][name.as_str()].as_str().unwrap_or("");
                let text = txn.get_or_insert_text(name.as_str());
                let mut pos: u32 = 0;
                for edit in crate::history::diff_text(old, new) {
                    let units = u32::try_from(edit.text.encode_utf16().count())
                        .map_err(|_| RestoreError::TooLarge)?;
                    match edit.op {
                        crate::history::DiffOp::Equal => pos += units,
                        crate::history::DiffOp::Delete => text.remove_range(&mut txn, pos, units),
                        crate::history::DiffOp::Insert => {
                            text.insert(&mut txn, pos, &edit.text);
                            pos += units;
                        }
                    }
                }
                report.texts.push(name.clone());
            }
            txn.encode_update_v1()
        };
        let yjs = if report.texts.is_empty() {
            Vec::new()
        } else {
            yjs
        };
        let mut registers = BTreeMap::new();
        for name in summary.registers.keys() {
            let value = target
                .registers
                .get(name)
                .map_or(Value::Null, |r| r.value().clone());
            // The write must win: a clock that never observed the current write's stamp (a
            // server that restarted since) still stamps past it.
            let mut at = stamp();
            if let Some(current) = self.registers.get(name)
                && at <= current.stamp()
            {
                at = HlcTimestamp::new(current.stamp().time.saturating_add(1), at.replica);
            }
            registers.insert(name.clone(), LwwRegister::new(value, at));
            report.registers.push(name.clone());
        }
        for (name, change) in summary.counters {
            report.counters_not_restored.insert(
                name,
                CounterNotRestored {
                    current: change.from,
                    at_version: change.to,
                },
            );
        }
        report.not_restored = summary.other;
        Ok((
            Delta {
                yjs,
                counters: BTreeMap::new(),
                registers,
            },
            report,
        ))
    }
}
