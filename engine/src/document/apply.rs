//! Applying deltas: the checks a delta passes before anything changes, the owners of client
//! ids, and the Yjs updates held back until what they build on arrives.
//!
//! Every Yjs update goes through [`crate::yjs::plan`] before yrs integrates it, so the
//! document's [`TypeIndex`] always describes exactly what yrs holds, and no update can nest
//! shared types deeper than [`MAX_TYPE_DEPTH`](crate::yjs::MAX_TYPE_DEPTH). Nothing is left
//! pending inside yrs: an update that cannot be integrated whole is refused (a peer's) or held
//! here (a trusted one), with the clocks it waits for, so a later delta re-plans only the held
//! updates those clocks unblock.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact, Update, WriteTxn};

use super::{Applied, ApplyError, Delta, Document, check_name, panic_reason};
use crate::yjs::{ParsedUpdate, Plan, PlanError, PlanMode, YId, parse_update_v1, plan};

/// Most bytes of Yjs updates a document holds back while waiting for missing clocks. Only
/// trusted deltas are held ([`Trust::Trusted`]); a peer's are refused instead.
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// Who a delta comes from and how strictly it is checked ([`Document::apply_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// The principal that sent it (a token's subject). It becomes the owner of every client id
    /// (Yjs client, counter replica, register stamp replica) the delta is the first to use;
    /// `None` (no authentication, or a local edit) records and checks nothing.
    pub author: Option<&'a str>,
    /// How strictly the delta is checked, and what happens to a Yjs update that builds on
    /// clocks the document lacks.
    pub trust: Trust,
}

impl<'a> Source<'a> {
    /// A local edit, a stored entry, the server's own change: [`Trust::Trusted`].
    pub fn trusted(author: Option<&'a str>) -> Self {
        Source {
            author,
            trust: Trust::Trusted,
        }
    }

    /// A peer's delta on the server: [`Trust::Peer`].
    pub fn peer(author: Option<&'a str>) -> Self {
        Source {
            author,
            trust: Trust::Peer,
        }
    }
}

/// How much a delta is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Local edits, the store's own log and checkpoints, the server's changes: a Yjs update
    /// that builds on clocks the document lacks is held until they arrive
    /// ([`MAX_HELD_BYTES`]), and owners are recorded but never enforced.
    Trusted,
    /// A peer's delta, on the server. Refused unless its Yjs update can be integrated now,
    /// whole ([`ApplyError::MissingDependencies`] otherwise), deletes only clocks the document
    /// then holds, and adds content only under client ids that belong to its author or to no
    /// one yet ([`ApplyError::ClientIdTaken`]). An accepted delta is therefore entirely
    /// visible in the document at once: an acknowledgement of it is never a promise of
    /// something that may never appear.
    Peer,
}

/// A trusted Yjs update waiting for clocks the document lacks.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub bytes: Vec<u8>,
    /// Worth planning again once the document holds this id.
    waits_for: YId,
    author: Option<Arc<str>>,
}

impl Held {
    fn ready(&self, doc: &Document) -> bool {
        self.waits_for.clock < doc.index.end(self.waits_for.client)
    }
}

impl From<PlanError> for ApplyError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Missing(id) => ApplyError::MissingDependencies {
                client: id.client,
                clock: id.clock,
            },
            PlanError::TooDeep { at, depth } => ApplyError::TooDeep {
                client: at.client,
                clock: at.clock,
                depth,
            },
            PlanError::InvalidParent { at, parent } => ApplyError::Decode {
                reason: format!(
                    "item {}:{} names {}:{} as its parent, which is not a shared type",
                    at.client, at.clock, parent.client, parent.clock
                ),
            },
            PlanError::DuplicateClient { client } => ApplyError::Decode {
                reason: format!("client {client} is listed twice"),
            },
        }
    }
}

/// A checked, decoded Yjs update with its structs.
pub(super) fn decode_update(bytes: &[u8]) -> Result<(Update, ParsedUpdate), ApplyError> {
    let parsed = parse_update_v1(bytes)?;
    Ok((decode_checked(bytes)?, parsed))
}

/// Whether an item of `parsed` starts before what the document holds of its client and ends
/// after it, while naming its parent outright (no origin on either side).
///
/// yrs cuts such an item where the document's clocks end and links the cut-off rest after the
/// item at the last clock held, but keeps the parent the item names. Encoded again, the rest
/// carries that left neighbour as its origin and no parent, so it reads back into the
/// neighbour's parent: a document, its snapshot and the updates it holds back could disagree
/// whenever the two parents differ (fuzz input `regressions/yjs_apply/snapshot-duplicates-text`).
/// A resend that repeats acknowledged clocks in one merged item is such an update, with equal
/// parents.
fn straddles(parsed: &ParsedUpdate, end: impl Fn(u32) -> u32) -> bool {
    parsed.clients.iter().any(|(client, structs)| {
        let end = end(*client);
        structs.iter().any(|s| {
            matches!(s.kind, crate::yjs::StructKind::Item { .. })
                && s.origin.is_none()
                && s.right.is_none()
                && s.clock < end
                && s.clock.saturating_add(s.len) > end
        })
    })
}

/// A checked, decoded Yjs update, for callers that do not plan it ([`Delta::validate`]).
pub(super) fn check_and_decode(bytes: &[u8]) -> Result<Update, ApplyError> {
    crate::yjs::check_update_v1(bytes)?;
    decode_checked(bytes)
}

/// Decodes an update the guard has walked.
fn decode_checked(bytes: &[u8]) -> Result<Update, ApplyError> {
    // yrs 0.28.1 decodes some malformed content that it then re-encodes into bytes it cannot
    // read, and once such structs are in a document, encoding it (`snapshot`, `diff_since`)
    // panics; found by the `decode` fuzz target, the input is in `fuzz/regressions/`.
    let decoded = catch_unwind(|| {
        let update = Update::decode_v1(bytes)?;
        Update::decode_v1(&update.encode_v1())?;
        Ok::<_, yrs::encoding::read::Error>(update)
    });
    match decoded {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(e)) => Err(ApplyError::Decode {
            reason: e.to_string(),
        }),
        Err(p) => Err(ApplyError::Decode {
            reason: panic_reason(p.as_ref()),
        }),
    }
}

/// Every replica id a delta's counters and register stamps speak for.
fn crdt_replicas(delta: &Delta) -> BTreeSet<u32> {
    let counters = delta
        .counters
        .values()
        .flat_map(|c| c.entries().map(|(r, _)| r.get()));
    let registers = delta.registers.values().map(|r| r.stamp().replica.get());
    crate::ordered::set(counters.chain(registers))
}

impl Document {
    /// Applies a delta from `source`. See [`Trust`] for what each source is allowed, and
    /// [`ApplyError`] for what a refusal leaves behind (nothing, except
    /// [`ApplyError::Integrate`]).
    pub fn apply_from(&mut self, delta: &Delta, source: Source<'_>) -> Result<Applied, ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Poisoned);
        }
        delta
            .counters
            .keys()
            .try_for_each(|n| check_name("counter", n))?;
        delta
            .registers
            .keys()
            .try_for_each(|n| check_name("register", n))?;
        let mut claimed = crdt_replicas(delta);
        // A planned update, or one to hold.
        let mut planned: Option<(Update, Plan)> = None;
        let mut hold: Option<YId> = None;
        if !delta.yjs.is_empty() {
            let (update, parsed) = self.decode_for(&delta.yjs)?;
            let mode = match source.trust {
                Trust::Peer => PlanMode::Strict,
                Trust::Trusted => PlanMode::Partial,
            };
            match plan(&self.index, &parsed, mode) {
                Ok(p) => {
                    claimed.extend(p.new_clients());
                    planned = Some((update, p));
                }
                Err(PlanError::Missing(id)) if source.trust == Trust::Trusted => hold = Some(id),
                Err(e) => return Err(e.into()),
            }
        }
        if source.trust == Trust::Peer {
            self.check_owners(&claimed, source.author)?;
        }
        let author: Option<Arc<str>> = source.author.map(Arc::from);
        let mut changed = false;
        if let Some(waits_for) = hold {
            if self.held.iter().any(|h| h.bytes == delta.yjs) {
                return self.apply_crdt_maps(delta, false);
            }
            if self.held_bytes + delta.yjs.len() > MAX_HELD_BYTES {
                return Err(ApplyError::TooMuchHeld {
                    limit: MAX_HELD_BYTES,
                });
            }
            self.held_bytes += delta.yjs.len();
            self.held.push(Held {
                bytes: delta.yjs.clone(),
                waits_for,
                author: author.clone(),
            });
            changed = true;
        }
        if let Some((update, p)) = planned {
            let mode = match source.trust {
                Trust::Peer => PlanMode::Strict,
                Trust::Trusted => PlanMode::Partial,
            };
            changed |= self.integrate(update, p, mode, author.as_ref())?;
            changed |= self.integrate_held()?;
        }
        self.record_owners(claimed, author.as_ref());
        self.apply_crdt_maps(delta, changed)
    }

    /// Decodes a Yjs update to apply. One that [`straddles`] what the document holds is first
    /// rewritten as the difference from the document's state (`yrs::diff_updates_v1`), as
    /// `diff_since` would send it: the part the document lacks starts at its next clock with
    /// the last clock held as its origin, so its parent is that neighbour's, in the document
    /// and in every encoding of it alike.
    fn decode_for(&self, bytes: &[u8]) -> Result<(Update, ParsedUpdate), ApplyError> {
        let (update, parsed) = decode_update(bytes)?;
        if !straddles(&parsed, |c| self.index.end(c)) {
            return Ok((update, parsed));
        }
        let sv = self.ydoc.transact().state_vector().encode_v1();
        let diff = catch_unwind(|| yrs::diff_updates_v1(bytes, &sv));
        match diff {
            Ok(Ok(diff)) => decode_update(&diff),
            Ok(Err(e)) => Err(ApplyError::Decode {
                reason: e.to_string(),
            }),
            Err(p) => Err(ApplyError::Decode {
                reason: panic_reason(p.as_ref()),
            }),
        }
    }

    /// Refuses ids that another principal introduced.
    fn check_owners(&self, ids: &BTreeSet<u32>, author: Option<&str>) -> Result<(), ApplyError> {
        let Some(author) = author else {
            return Ok(());
        };
        for id in ids {
            if let Some(owner) = self.owners.get(id)
                && owner.as_ref() != author
            {
                return Err(ApplyError::ClientIdTaken { client: *id });
            }
        }
        Ok(())
    }

    fn record_owners(&mut self, ids: BTreeSet<u32>, author: Option<&Arc<str>>) {
        let Some(author) = author else {
            return;
        };
        for id in ids {
            self.owners.entry(id).or_insert_with(|| Arc::clone(author));
        }
    }

    /// Hands a planned update to yrs and commits the plan. What yrs keeps pending (structs a
    /// [`PlanMode::Partial`] plan left out) is taken out of it and held here, with `author`.
    /// A failure half-way, or a yrs that integrated other clocks than a strict plan said,
    /// poisons the document.
    fn integrate(
        &mut self,
        update: Update,
        plan: Plan,
        mode: PlanMode,
        author: Option<&Arc<str>>,
    ) -> Result<bool, ApplyError> {
        let ydoc = &self.ydoc;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = ydoc.transact_mut();
            let had_pending_ds = ReadTxn::store(&txn).pending_ds().is_some();
            txn.apply_update(update).map_err(|e| e.to_string())?;
            if mode == PlanMode::Strict {
                for (client, end) in plan.ends() {
                    let got = txn
                        .after_state()
                        .get(&yrs::block::ClientID::new(u64::from(client)));
                    if got != end {
                        return Err(format!(
                            "yrs holds client {client} up to {got}, the plan said {end}"
                        ));
                    }
                }
            }
            // A deletion of clocks not held yet stays pending in yrs (trusted deltas only).
            // Encoding the document merges it in, and yrs unwraps that merge; some fuzzed
            // updates make it fail, so encode once here, where a panic is caught.
            if !had_pending_ds && ReadTxn::store(&txn).pending_ds().is_some() {
                let whole = txn.encode_state_as_update_v1(&StateVector::default());
                Update::decode_v1(&whole)
                    .map_err(|e| format!("the document does not re-encode: {e}"))?;
            }
            let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
            let after = txn.after_state().clone();
            let pending = take_pending(&mut txn);
            Ok((changed, after, pending))
        }));
        let (changed, after, pending) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => {
                self.poisoned = true;
                return Err(ApplyError::Integrate { reason });
            }
            Err(p) => {
                self.poisoned = true;
                return Err(ApplyError::Integrate {
                    reason: panic_reason(p.as_ref()),
                });
            }
        };
        let planned: BTreeMap<u32, u32> = crate::ordered::map(plan.ends());
        let plan_waits_for = plan.waits_for();
        self.index.commit(plan);
        // yrs decides what stays pending with its own walk; should it have integrated more
        // than the plan found integrable, count those clocks at the deepest depth rather
        // than guess.
        for (client, clock) in after.iter() {
            let client = u32::try_from(client.get()).unwrap_or(u32::MAX);
            if planned.get(&client).is_some_and(|end| end < clock) {
                self.index.cover_unplanned(client, *clock);
            }
        }
        if let Some((bytes, yrs_waits_for)) = pending {
            // yrs records only that the client's next clock is missing; the plan knows the
            // clock the first left-out struct needs, so it is planned again only then.
            let waits_for = plan_waits_for.unwrap_or(yrs_waits_for);
            self.held_bytes += bytes.len();
            self.held.push(Held {
                bytes,
                waits_for,
                author: author.cloned(),
            });
        }
        Ok(changed)
    }

    /// Integrates every held update whose missing clocks have arrived. Each is planned again
    /// only once the clock it waited for is there; if it now waits for another, it is held
    /// for that one.
    pub(super) fn integrate_held(&mut self) -> Result<bool, ApplyError> {
        let mut changed = false;
        while let Some(i) = self.held.iter().position(|h| h.ready(self)) {
            self.held_replans += 1;
            let held = self.held.swap_remove(i);
            self.held_bytes -= held.bytes.len();
            let Ok((update, parsed)) = self.decode_for(&held.bytes) else {
                // It decoded when it was held; a rewrite that fails leaves it out for good.
                changed = true;
                continue;
            };
            match plan(&self.index, &parsed, PlanMode::Partial) {
                Ok(p) => {
                    let clients: BTreeSet<u32> = crate::ordered::set(p.new_clients());
                    changed |=
                        self.integrate(update, p, PlanMode::Partial, held.author.as_ref())?;
                    self.record_owners(clients, held.author.as_ref());
                }
                Err(PlanError::Missing(waits_for)) => {
                    self.held_bytes += held.bytes.len();
                    self.held.push(Held { waits_for, ..held });
                }
                // It can never go in (too deep, malformed): a trusted source sent content the
                // document refuses, and holding it would keep it forever.
                Err(_) => changed = true,
            }
        }
        Ok(changed)
    }

    /// Loads a whole stored document's Yjs state (a snapshot's content): what can be
    /// integrated is, and what waits for clocks the document lacks (legacy content that yrs
    /// kept pending when it was written) is held, as a trusted update would be.
    pub(super) fn load_yjs(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (update, parsed) = decode_update(bytes)?;
        let p = plan(&self.index, &parsed, PlanMode::Partial)?;
        self.integrate(update, p, PlanMode::Partial, None)?;
        Ok(())
    }

    /// Keeps the index in step after a local edit made through yrs: `update` is what the edit's
    /// transaction wrote.
    pub(super) fn index_local(&mut self, update: &[u8]) {
        let Ok(parsed) = parse_update_v1(update) else {
            return;
        };
        let ends: Vec<(u32, u32)> = parsed
            .clients
            .iter()
            .filter_map(|(c, s)| s.last().map(|last| (*c, last.clock + last.len)))
            .collect();
        // The edit is in the document already, so plan against the index as it was.
        match plan(&self.index, &parsed, PlanMode::Partial) {
            Ok(p) => self.index.commit(p),
            Err(_) => {
                for (client, end) in ends {
                    self.index.cover_unplanned(client, end);
                }
            }
        }
    }

    /// Number of Yjs updates held back for missing clocks.
    pub fn held_updates(&self) -> usize {
        self.held.len()
    }

    /// How many times a held update was planned again (tests check that unrelated deltas
    /// never re-walk what is held).
    #[doc(hidden)]
    pub fn held_replans(&self) -> u64 {
        self.held_replans
    }

    /// Who introduced each client id, for snapshots: owner → ids.
    pub(super) fn owners_by_author(&self) -> BTreeMap<String, Vec<u32>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (id, owner) in &self.owners {
            out.entry(owner.to_string()).or_default().push(*id);
        }
        out
    }

    pub(super) fn restore_owners(&mut self, owners: BTreeMap<String, Vec<u32>>) {
        for (owner, ids) in owners {
            let owner: Arc<str> = Arc::from(owner);
            for id in ids {
                self.owners.insert(id, Arc::clone(&owner));
            }
        }
    }

    /// The principal that introduced client id `client`, if one is recorded.
    pub fn owner_of(&self, client: u32) -> Option<&str> {
        self.owners.get(&client).map(AsRef::as_ref)
    }
}

/// Takes what yrs keeps pending out of it: the pending structs as one update, and the first
/// clock they wait for. Nothing is left pending inside yrs, where it could be integrated later
/// without a plan.
fn take_pending(txn: &mut yrs::TransactionMut<'_>) -> Option<(Vec<u8>, YId)> {
    let pending = txn
        .store_mut()
        .pending_update_mut()
        .filter(|p| !p.update.is_empty())?;
    let bytes = pending.update.encode_v1();
    let waits_for = pending.missing.iter().next().map_or(
        YId {
            client: u32::MAX,
            clock: u32::MAX,
        },
        |(client, clock)| YId {
            client: u32::try_from(client.get()).unwrap_or(u32::MAX),
            clock: *clock,
        },
    );
    pending.update = Update::new();
    pending.missing = StateVector::default();
    Some((bytes, waits_for))
}
