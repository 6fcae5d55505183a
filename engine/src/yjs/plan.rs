//! Planning an update's integration: what it depends on, where its structs land in the tree of
//! shared types, and which clocks it adds.
//!
//! A [`TypeIndex`] mirrors, for every clock a document holds, how deep the struct at that clock
//! sits (the depth of its parent type) and whether it holds a type. [`plan`] walks a
//! [`ParsedUpdate`] the way yrs integrates one (a client's structs in clock order; a struct
//! whose origin, right origin or parent is in another client's part of the update waits for
//! that part first) and computes the same for every struct it adds, without touching the
//! document. The caller integrates the update only if the plan succeeds, then commits the plan
//! to the index, so the index and the document never disagree about what is there.
//!
//! Depths are an upper bound of yrs's: an item whose origin and right origin sit at different
//! depths (which no Yjs client writes) is counted at the deeper one, and one whose parent yrs
//! has since garbage-collected keeps the depth it had. The bound is what keeps recursion safe.

use std::collections::{BTreeMap, VecDeque};

use super::{MAX_TYPE_DEPTH, ParentRef, ParsedUpdate, StructKind, StructRec, YId};

/// Depth of a struct yrs can find no parent for (a GC range, or an item whose neighbours are
/// gone): it holds nothing and nests nothing.
const NO_PARENT: u8 = 0;

/// Clocks `[start, next run's start)` of one client, all at `depth`, or one type item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u32,
    /// Depth of the struct's parent type (1: a root type); [`NO_PARENT`] when it has none.
    depth: u8,
    /// The run is one item whose content is a shared type, at `depth`; its children sit at
    /// `depth + 1`.
    is_type: bool,
}

/// One client's clocks `0..end`, as runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Runs {
    runs: Vec<Run>,
    end: u32,
}

impl Runs {
    fn starting_at(end: u32) -> Runs {
        Runs {
            runs: Vec::new(),
            end,
        }
    }

    fn get(&self, clock: u32) -> Option<Run> {
        if clock >= self.end {
            return None;
        }
        let i = self.runs.partition_point(|r| r.start <= clock);
        self.runs.get(i.checked_sub(1)?).copied()
    }

    /// Appends clocks `clock..clock + len` (which continue the runs).
    fn push(&mut self, clock: u32, len: u32, depth: u8, is_type: bool) {
        if len == 0 {
            return;
        }
        let extends = self.runs.last().is_some_and(|last| {
            !last.is_type && !is_type && last.depth == depth && self.end == clock
        });
        if !extends {
            self.runs.push(Run {
                start: clock,
                depth,
                is_type,
            });
        }
        self.end = clock + len;
    }

    fn append(&mut self, other: Runs) {
        for run in other.runs {
            let extends = self
                .runs
                .last()
                .is_some_and(|last| !last.is_type && !run.is_type && last.depth == run.depth);
            if !extends {
                self.runs.push(run);
            }
        }
        self.end = self.end.max(other.end);
    }
}

/// Where every clock of a document sits in its tree of shared types.
///
/// **Invariant:** for every client, `end` is the clock the document's state vector holds for it
/// (the owner updates both together, see [`plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TypeIndex {
    clients: BTreeMap<u32, Runs>,
}

impl TypeIndex {
    /// The first clock of `client` the document does not hold.
    pub(crate) fn end(&self, client: u32) -> u32 {
        self.clients.get(&client).map_or(0, |r| r.end)
    }

    fn get(&self, id: YId) -> Option<Run> {
        self.clients.get(&id.client)?.get(id.clock)
    }

    /// Adds what a successful [`plan`] found.
    pub(crate) fn commit(&mut self, plan: Plan) {
        for (client, runs) in plan.added {
            self.clients.entry(client).or_default().append(runs);
        }
    }

    /// Records clocks `end(client)..clock_end` as held by yrs at an unknown depth, counted as
    /// the deepest allowed, so that nothing can nest below them. For clocks yrs integrated
    /// without a plan (it never should); keeps the invariant rather than trust a guess.
    pub(crate) fn cover_unplanned(&mut self, client: u32, clock_end: u32) {
        let runs = self.clients.entry(client).or_default();
        if clock_end > runs.end {
            let start = runs.end;
            runs.push(start, clock_end - start, MAX_TYPE_DEPTH, true);
        }
    }

    /// Number of runs kept, for tests and memory accounting.
    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        self.clients.values().map(|r| r.runs.len()).sum()
    }
}

/// How strictly [`plan`] treats an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlanMode {
    /// Every struct must be integrable now, and deletions may name only clocks the document
    /// holds once the update is in: a peer's delta on the server.
    Strict,
    /// Structs that wait for another's clocks are left out (yrs keeps them pending, as Yjs
    /// does), and deletions of clocks not held yet are left to yrs: trusted content. A struct
    /// past a gap in its own client's clocks still fails the plan (yrs would integrate it
    /// behind a skip, where Yjs keeps it pending).
    Partial,
}

/// What integrating an update adds: new clocks per client, with their depths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    added: BTreeMap<u32, Runs>,
    /// In a [`PlanMode::Partial`] plan that left structs out: the first id they wait for.
    waits_for: Option<YId>,
}

impl Plan {
    /// What the structs a partial plan left out wait for first, if it left any out.
    pub(crate) fn waits_for(&self) -> Option<YId> {
        self.waits_for
    }

    /// Clients the update adds clocks to.
    pub(crate) fn new_clients(&self) -> impl Iterator<Item = u32> + '_ {
        self.added
            .iter()
            .filter(|(_, runs)| !runs.runs.is_empty())
            .map(|(client, _)| *client)
    }

    /// Every client the plan covers, with the end it expects, to check against the document.
    pub(crate) fn ends(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.added.iter().map(|(c, r)| (*c, r.end))
    }
}

/// Why an update cannot be integrated as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// A struct builds on (or a deletion names) clock `0` of client `1` that neither the
    /// document nor the update holds.
    Missing(YId),
    /// A shared type at `at` would sit at `depth`, deeper than [`MAX_TYPE_DEPTH`].
    TooDeep { at: YId, depth: u32 },
    /// The item at `at` names `parent` as its parent, which is not a shared type.
    InvalidParent { at: YId, parent: YId },
    /// The update lists `client` twice (no Yjs encoder does; yrs would read it out of order).
    DuplicateClient { client: u32 },
}

/// A struct as yrs integrates it: the part of it the document lacks, with its origin moved
/// to the last clock it holds when yrs trims it.
#[derive(Clone, Copy, Debug)]
struct Pick {
    client: u32,
    s: StructRec,
}

/// The order yrs 0.28.1 integrates an update in (`Update::integrate` with its `BlockPicker`),
/// struct by struct: clients from the highest id down, each in clock order; a struct whose
/// origin, right origin or parent is missing goes on a stack while the client it waits for
/// goes first, unless that client already waits on the stack (a cycle) or has nothing left,
/// in which case every struct on the stack, and the rest of its client's structs, stays
/// pending. The plan follows the same order so that it integrates exactly what yrs will.
struct Picker {
    /// Each client's structs not yet taken, in clock order.
    queues: BTreeMap<u32, VecDeque<StructRec>>,
    /// Clients not started yet, ascending; taken from the end.
    order: Vec<u32>,
    latest: Option<(u32, VecDeque<StructRec>)>,
    stack: Vec<Pick>,
}

impl Picker {
    fn next(&mut self) -> Option<Pick> {
        if let Some(pick) = self.stack.pop() {
            return Some(pick);
        }
        loop {
            if let Some((client, queue)) = &mut self.latest
                && let Some(s) = queue.pop_front()
            {
                return Some(Pick { client: *client, s });
            }
            let client = self.order.pop()?;
            self.latest = self.queues.remove(&client).map(|q| (client, q));
        }
    }

    /// `pick` waits for `missing`'s structs: the next struct to try, or `None` when it can
    /// never go in (then it, and everything waiting with it, stays pending).
    fn switch(&mut self, pick: Pick, missing: u32) -> Option<Pick> {
        self.stack.push(pick);
        let waiting = self.stack.iter().any(|p| p.client == missing);
        match self.queues.get_mut(&missing) {
            Some(queue) if !queue.is_empty() && !waiting => {
                let s = queue.pop_front()?;
                Some(Pick { client: missing, s })
            }
            _ => None,
        }
    }

    /// Leaves everything on the stack (and the rest of each of its clients) pending.
    fn drop_stack(&mut self) {
        for pick in std::mem::take(&mut self.stack) {
            if self.queues.remove(&pick.client).is_none()
                && let Some((client, queue)) = &mut self.latest
                && *client == pick.client
            {
                queue.clear();
            }
        }
    }
}

struct Planner<'a> {
    index: &'a TypeIndex,
    added: BTreeMap<u32, Runs>,
}

/// Plans the integration of `update` into a document whose structs `index` describes. See the
/// module docs; nothing is changed.
pub(crate) fn plan(
    index: &TypeIndex,
    update: &ParsedUpdate,
    mode: PlanMode,
) -> Result<Plan, PlanError> {
    let mut queues = BTreeMap::new();
    for (client, structs) in &update.clients {
        // yrs first turns what the document already holds into skips.
        let end = index.end(*client);
        let queue: VecDeque<StructRec> = structs
            .iter()
            .filter(|s| s.kind != StructKind::Skip && s.len > 0 && s.clock + s.len > end)
            .map(|s| trim(*client, *s, end))
            .collect();
        if queues.insert(*client, queue).is_some() {
            return Err(PlanError::DuplicateClient { client: *client });
        }
    }
    let mut picker = Picker {
        order: queues.keys().copied().collect(),
        queues,
        latest: None,
        stack: Vec::new(),
    };
    let mut p = Planner {
        index,
        added: BTreeMap::new(),
    };
    let mut waits_for = None;
    let mut next = picker.next();
    while let Some(pick) = next {
        if let Some(missing) = p.missing_dependency(&pick) {
            next = picker.switch(pick, missing.client);
            if next.is_none() {
                if mode != PlanMode::Partial {
                    return Err(PlanError::Missing(missing));
                }
                waits_for.get_or_insert(missing);
                picker.drop_stack();
                next = picker.next();
            }
            continue;
        }
        p.integrate(pick)?;
        next = picker.next();
    }
    if mode == PlanMode::Strict {
        for &(client, clock, len) in &update.deleted {
            let end = p.end(client);
            if len > 0 && clock + len > end {
                return Err(PlanError::Missing(YId {
                    client,
                    clock: clock + len - 1,
                }));
            }
        }
    }
    Ok(Plan {
        added: p.added,
        waits_for,
    })
}

/// The part of `s` from clock `end` on, as yrs splits a struct it partly holds: the part it
/// lacks has the last clock before it as its origin.
fn trim(client: u32, mut s: StructRec, end: u32) -> StructRec {
    if s.clock < end {
        s.len -= end - s.clock;
        s.clock = end;
        if matches!(s.kind, StructKind::Item { .. }) {
            s.origin = Some(YId {
                client,
                clock: end - 1,
            });
        }
    }
    s
}

impl Planner<'_> {
    fn end(&self, client: u32) -> u32 {
        match self.added.get(&client) {
            Some(runs) => runs.end,
            None => self.index.end(client),
        }
    }

    fn get(&self, id: YId) -> Option<Run> {
        if let Some(runs) = self.added.get(&id.client)
            && id.clock >= self.index.end(id.client)
        {
            return runs.get(id.clock);
        }
        self.index.get(id)
    }

    /// The first id an item builds on that is not there yet, checked in yrs's order.
    fn missing_dependency(&self, pick: &Pick) -> Option<YId> {
        if !matches!(pick.s.kind, StructKind::Item { .. }) {
            return None;
        }
        let parent = match pick.s.parent {
            ParentRef::Item(id) => Some(id),
            ParentRef::Inferred | ParentRef::Root => None,
        };
        [pick.s.origin, pick.s.right, parent]
            .into_iter()
            .flatten()
            .find(|dep| dep.clock >= self.end(dep.client))
    }

    /// The depth of a known struct's parent, if it has one.
    fn parent_depth_of(&self, id: Option<YId>) -> Option<u8> {
        self.get(id?).map(|r| r.depth).filter(|d| *d != NO_PARENT)
    }

    fn integrate(&mut self, pick: Pick) -> Result<(), PlanError> {
        let Pick { client, s } = pick;
        let end = self.end(client);
        let at = YId {
            client,
            clock: s.clock,
        };
        if s.clock > end {
            // yrs would integrate it behind a skip, where Yjs keeps it pending: replicas that
            // receive updates in different orders would diverge. Never let yrs do that.
            // It needs every clock before it; the last one implies the others.
            return Err(PlanError::Missing(YId {
                client,
                clock: s.clock - 1,
            }));
        }
        let (depth, is_type) = match s.kind {
            StructKind::Gc | StructKind::Skip => (NO_PARENT, false),
            StructKind::Item { is_type } => {
                let depth = self.item_depth(&s, at)?;
                if is_type && depth != NO_PARENT {
                    let nested = u32::from(depth) + 1;
                    if nested > u32::from(MAX_TYPE_DEPTH) {
                        return Err(PlanError::TooDeep { at, depth: nested });
                    }
                }
                (depth, is_type)
            }
        };
        self.added
            .entry(client)
            .or_insert_with(|| Runs::starting_at(end))
            .push(s.clock, s.len, depth, is_type);
        Ok(())
    }

    /// The depth of the type an item lands in, as yrs decides it (or deeper; see the module
    /// docs).
    fn item_depth(&self, s: &StructRec, at: YId) -> Result<u8, PlanError> {
        Ok(match s.parent {
            ParentRef::Inferred => {
                let left = self.parent_depth_of(s.origin);
                let right = self.parent_depth_of(s.right);
                left.max(right).unwrap_or(NO_PARENT)
            }
            ParentRef::Root => 1,
            ParentRef::Item(parent) => match self.get(parent) {
                Some(run) if run.is_type && run.depth != NO_PARENT => run.depth + 1,
                // A GC range (or an unknown parent): yrs drops the item to a GC range.
                Some(run) if run.depth == NO_PARENT => NO_PARENT,
                None => NO_PARENT,
                // Content that is not a type: yrs refuses the whole update after integrating
                // part of it, which would leave the document half-changed.
                Some(_) => return Err(PlanError::InvalidParent { at, parent }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::yjs::{ParsedUpdate, parse_update_v1};
    use yrs::updates::decoder::Decode;
    use yrs::{Array, ArrayPrelim, ArrayRef, Doc, ReadTxn, StateVector, Transact};

    fn parsed(bytes: &[u8]) -> ParsedUpdate {
        parse_update_v1(bytes).unwrap()
    }

    fn doc(client: u64) -> Doc {
        Doc::with_client_id(client)
    }

    /// Nests `levels` arrays below the root array "a" of `d`, one transaction per level, and
    /// returns each level's update.
    fn nest(d: &Doc, levels: usize) -> Vec<Vec<u8>> {
        let root: ArrayRef = d.get_or_insert_array("a");
        let mut updates = Vec::new();
        let mut sv = d.transact().state_vector();
        let mut current = root;
        for _ in 0..levels {
            let mut txn = d.transact_mut();
            current = current.insert(&mut txn, 0, ArrayPrelim::default());
            drop(txn);
            let txn = d.transact();
            updates.push(txn.encode_state_as_update_v1(&sv));
            sv = txn.state_vector();
        }
        updates
    }

    #[test]
    fn depth_is_counted_across_updates_and_refused_past_the_limit() {
        let d = doc(7);
        let updates = nest(&d, usize::from(MAX_TYPE_DEPTH));
        let mut index = TypeIndex::default();
        // Levels 2..=MAX: the root array is depth 1, so MAX - 1 nested arrays fit.
        for (i, u) in updates.iter().enumerate() {
            let result = plan(&index, &parsed(u), PlanMode::Strict);
            if i + 2 <= usize::from(MAX_TYPE_DEPTH) {
                index.commit(result.unwrap());
            } else {
                assert!(
                    matches!(result, Err(PlanError::TooDeep { depth, .. }) if depth == u32::from(MAX_TYPE_DEPTH) + 1),
                    "level {}: {result:?}",
                    i + 2
                );
            }
        }
    }

    #[test]
    fn a_whole_deep_document_in_one_update_is_refused() {
        let d = doc(3);
        nest(&d, 200);
        let whole = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let err = plan(&TypeIndex::default(), &parsed(&whole), PlanMode::Partial).unwrap_err();
        assert!(matches!(err, PlanError::TooDeep { .. }), "{err:?}");
    }

    #[test]
    fn missing_dependencies_are_named_and_partial_plans_leave_them_out() {
        let a = doc(1);
        let updates = nest(&a, 3);
        // The second level without the first: its parent (client 1, clock 0) is missing.
        let err = plan(
            &TypeIndex::default(),
            &parsed(&updates[1]),
            PlanMode::Strict,
        );
        assert_eq!(
            err,
            Err(PlanError::Missing(YId {
                client: 1,
                clock: 0
            }))
        );
        let partial = plan(
            &TypeIndex::default(),
            &parsed(&updates[1]),
            PlanMode::Partial,
        )
        .unwrap();
        assert_eq!(partial.new_clients().count(), 0);
    }

    #[test]
    fn strict_plans_refuse_deleting_what_is_not_there() {
        // Client 9 deletes clocks 0..4 of client 5, which nothing holds.
        let u = [0, 1, 5, 1, 0, 4];
        let parsed = parsed(&u);
        assert_eq!(
            plan(&TypeIndex::default(), &parsed, PlanMode::Strict),
            Err(PlanError::Missing(YId {
                client: 5,
                clock: 3
            }))
        );
        assert!(plan(&TypeIndex::default(), &parsed, PlanMode::Partial).is_ok());
    }

    #[test]
    fn typing_keeps_one_run_per_client() {
        let d = doc(11);
        let text = d.get_or_insert_text("t");
        let mut index = TypeIndex::default();
        for i in 0..500u32 {
            let sv = d.transact().state_vector();
            {
                use yrs::Text;
                let mut txn = d.transact_mut();
                text.insert(&mut txn, i, "x");
            }
            let u = d.transact().encode_state_as_update_v1(&sv);
            index.commit(plan(&index, &parsed(&u), PlanMode::Strict).unwrap());
        }
        assert_eq!(index.end(11), 500);
        assert_eq!(index.run_count(), 1);
    }

    #[test]
    fn out_of_order_parts_of_one_update_are_resolved() {
        // Two clients: 2 nests inside 1's array, and the update lists 2 first.
        let a = doc(1);
        let root = a.get_or_insert_array("a");
        {
            let mut txn = a.transact_mut();
            root.insert(&mut txn, 0, ArrayPrelim::default());
        }
        let b = doc(2);
        let first = a
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        b.transact_mut()
            .apply_update(yrs::Update::decode_v1(&first).unwrap())
            .unwrap();
        {
            let root = b.get_or_insert_array("a");
            let mut txn = b.transact_mut();
            let inner: ArrayRef = root.get(&txn, 0).unwrap().cast().unwrap();
            inner.insert(&mut txn, 0, ArrayPrelim::default());
        }
        let whole = b
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut p = parsed(&whole);
        p.clients.sort_by_key(|(c, _)| std::cmp::Reverse(*c));
        let mut index = TypeIndex::default();
        index.commit(plan(&index, &p, PlanMode::Strict).unwrap());
        assert_eq!(index.end(1), 1);
        assert_eq!(index.end(2), 1);
        assert_eq!(
            index.get(YId {
                client: 2,
                clock: 0
            }),
            Some(Run {
                start: 0,
                depth: 2,
                is_type: true
            })
        );
    }
}
