//! Yjs v1 updates, checked before `yrs` decodes them, and planned before `yrs` integrates them.
//!
//! **The guard.** `yrs` trusts the counts an update declares and reserves memory for them up
//! front: the four bytes `9f 9e 97 31` declare ~103 million clients and make yrs 0.28.1 try to
//! reserve ~5.5 GB. [`check_update_v1`] walks the whole update without allocating, and refuses
//! it unless
//! - every declared count fits in the bytes that remain (each element takes at least one byte),
//!   so whatever yrs then allocates is bounded by the input size;
//! - nested `Any` values are at most [`MAX_ANY_DEPTH`] deep, so decoding cannot blow the stack;
//! - every client id fits in 32 bits (see [`ReplicaId`](crate::ReplicaId)): stock Yjs clients
//!   before v14 expect that, and one wider id would make the document unreadable to them;
//! - every clock range ends within 32 bits (yrs adds clocks in `u32`);
//! - strings are UTF-8, every content and type tag is one Yjs defines, and the update ends
//!   exactly where its delete set ends (no trailing bytes to be stored and relayed).
//!
//! The walk mirrors how `yrs` 0.28.1 itself reads update v1 (`clients, (structs, client, clock,
//! struct*)*, delete set`), byte for byte, including where it differs from Yjs: GC and skip
//! structs are recognised by the whole info byte, JSON content holds one string more than its
//! count, and an XML hook type carries no name. A walk that disagreed with yrs about where a
//! struct ends would check other bytes than yrs reads, and the size bound would not hold.
//!
//! **The plan** (`plan`) decides, before yrs sees a decoded update, whether every struct in
//! it can be integrated now (nothing it builds on is missing) and how deep in the tree of
//! shared types each one lands. Shared types nest (a `Y.Array` inside a `Y.Array` …), and yrs
//! walks that tree recursively when it deletes, garbage-collects or serialises it, so nesting
//! beyond [`MAX_TYPE_DEPTH`] is refused: a deep enough tree overflows the stack, which aborts
//! the process (it cannot be caught).

mod plan;

pub(crate) use plan::{Plan, PlanError, PlanMode, TypeIndex, plan};

/// Deepest nesting of `Any` arrays and maps accepted inside an update.
pub const MAX_ANY_DEPTH: usize = 128;

/// Deepest nesting of shared types accepted in a document: a root type (`doc.getMap("m")`) is
/// at depth 1, a type inside it at depth 2, and so on. Real documents stay far below (a rich
/// text editor's nested lists reach 10–20); at this depth every recursive walk yrs makes over
/// the tree stays far below a 1 MiB stack, the smallest a driver gives it (wasm32).
pub const MAX_TYPE_DEPTH: u8 = 64;

/// Why an update was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateCheckError {
    /// The input ends in the middle of a field.
    #[error("update ends early at byte {at}")]
    Truncated {
        /// The offset where the input ran out (for a fixed-size field, the input's length).
        at: usize,
    },
    /// A variable-length integer runs past 64 bits (or, signed, past ten bytes).
    #[error("variable-length integer too long at byte {at}")]
    VarIntOverflow {
        /// The offset where the integer starts.
        at: usize,
    },
    /// A count (of clients, structs, ranges, bytes, values…) larger than the bytes that remain,
    /// when each counted element takes at least one: the input lies about its size.
    #[error("count {count} at byte {at} exceeds the {remaining} bytes that remain")]
    CountTooLarge {
        /// The count declared.
        count: u64,
        /// The bytes left after the count.
        remaining: usize,
        /// The offset where the count starts.
        at: usize,
    },
    /// A client id that does not fit in 32 bits.
    #[error("client id {client} is wider than 32 bits; Yjs clients before v14 cannot read it")]
    ClientIdTooWide {
        /// The id declared.
        client: u64,
    },
    /// A clock, a clock range's end, or another 32-bit number of the format (a length) that
    /// does not fit in 32 bits.
    #[error("clock {clock} does not fit in 32 bits")]
    ClockTooLarge {
        /// The value declared, or the end of the range.
        clock: u64,
    },
    /// A tag Yjs does not define.
    #[error("unknown {what} tag {tag} at byte {at}")]
    UnknownTag {
        /// Which tag: `"content"`, `"type"` or `"any"`.
        what: &'static str,
        /// The tag read.
        tag: u8,
        /// The offset of the tag.
        at: usize,
    },
    /// A string that is not UTF-8.
    #[error("string at byte {at} is not UTF-8")]
    NotUtf8 {
        /// The offset where the string (its length) starts.
        at: usize,
    },
    /// `Any` arrays and maps nested deeper than [`MAX_ANY_DEPTH`].
    #[error("values nested deeper than {MAX_ANY_DEPTH} at byte {at}")]
    TooDeep {
        /// The offset of the value past the limit.
        at: usize,
    },
    /// Subdocuments are not synced by Lattice, and yrs 0.28.1 leaks every subdocument it
    /// decodes (a reference cycle through the parent store), so a peer could grow the server's
    /// memory at will by sending them.
    #[error("subdocument content at byte {at} is not supported")]
    Subdocument {
        /// The offset of the subdocument content.
        at: usize,
    },
    /// The update (or state vector) ends at byte `at`, but the input is `len` bytes long.
    #[error("{trailing} bytes after the end of the update at byte {at}", trailing = .len - .at)]
    TrailingBytes {
        /// Where the update ends.
        at: usize,
        /// The input's length.
        len: usize,
    },
}

/// A Yjs struct id: a client and a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YId {
    /// The Yjs client id of the replica that created the struct.
    pub client: u32,
    /// The struct's position in that client's sequence: each client numbers its content from
    /// 0, one clock per unit of content (a UTF-16 code unit of text, an array element…).
    pub clock: u32,
}

/// Where an item says its parent is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParentRef {
    /// Not written: the item has an origin, and its parent is its neighbours' parent.
    Inferred,
    /// A root type, by name.
    Root,
    /// The item holding the parent type.
    Item(YId),
}

/// What a struct is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StructKind {
    /// A garbage-collected range: clocks with no content and no parent.
    Gc,
    /// Clocks the update does not carry.
    Skip,
    /// An item; `is_type` when its content is a shared type (which other items can nest in).
    Item { is_type: bool },
}

/// One struct of an update, as the plan needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StructRec {
    pub clock: u32,
    pub len: u32,
    pub kind: StructKind,
    pub origin: Option<YId>,
    pub right: Option<YId>,
    pub parent: ParentRef,
}

/// What a walk over an update reports, in order.
pub(crate) trait Visit {
    /// A client's section starts: `structs` structs from clock `start`.
    fn client(&mut self, client: u32, start: u32, structs: usize);
    /// The next struct of the current client.
    fn structure(&mut self, s: StructRec);
    /// A deleted range of the delete set.
    fn deleted(&mut self, client: u32, clock: u32, len: u32);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, UpdateCheckError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(UpdateCheckError::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], UpdateCheckError> {
        if n > self.remaining() {
            return Err(UpdateCheckError::Truncated { at: self.buf.len() });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// lib0 unsigned varint: 7 bits a byte, high bit = more.
    fn var_u64(&mut self) -> Result<u64, UpdateCheckError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift >= 64 || (shift == 63 && b & 0x7e != 0) {
                return Err(UpdateCheckError::VarIntOverflow { at: start });
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// lib0 signed varint: first byte carries 6 bits and the sign, then 7 bits a byte.
    fn var_i64(&mut self) -> Result<(), UpdateCheckError> {
        let start = self.pos;
        let mut b = self.u8()?;
        let mut bytes = 1;
        while b & 0x80 != 0 {
            if bytes >= 10 {
                return Err(UpdateCheckError::VarIntOverflow { at: start });
            }
            b = self.u8()?;
            bytes += 1;
        }
        Ok(())
    }

    fn var_u32(&mut self) -> Result<u32, UpdateCheckError> {
        let v = self.var_u64()?;
        u32::try_from(v).map_err(|_| UpdateCheckError::ClockTooLarge { clock: v })
    }

    /// A count of elements that each take at least one byte.
    fn count(&mut self) -> Result<usize, UpdateCheckError> {
        let at = self.pos;
        let count = self.var_u64()?;
        let remaining = self.remaining();
        match usize::try_from(count) {
            Ok(n) if n <= remaining => Ok(n),
            _ => Err(UpdateCheckError::CountTooLarge {
                count,
                remaining,
                at,
            }),
        }
    }

    fn client(&mut self) -> Result<u32, UpdateCheckError> {
        let client = self.var_u64()?;
        u32::try_from(client).map_err(|_| UpdateCheckError::ClientIdTooWide { client })
    }

    fn id(&mut self) -> Result<YId, UpdateCheckError> {
        let client = self.client()?;
        let clock = self.var_u32()?;
        Ok(YId { client, clock })
    }

    fn buf(&mut self) -> Result<&'a [u8], UpdateCheckError> {
        let len = self.count()?;
        self.skip(len)
    }

    fn string(&mut self) -> Result<(), UpdateCheckError> {
        let at = self.pos;
        let bytes = self.buf()?;
        std::str::from_utf8(bytes).map_err(|_| UpdateCheckError::NotUtf8 { at })?;
        Ok(())
    }

    fn any(&mut self, depth: usize) -> Result<(), UpdateCheckError> {
        let at = self.pos;
        if depth > MAX_ANY_DEPTH {
            return Err(UpdateCheckError::TooDeep { at });
        }
        match self.u8()? {
            127 | 126 | 121 | 120 => Ok(()),
            125 => self.var_i64(),
            124 => self.skip(4).map(drop),
            123 | 122 => self.skip(8).map(drop),
            119 => self.string(),
            118 => {
                for _ in 0..self.count()? {
                    self.string()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                for _ in 0..self.count()? {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            116 => self.buf().map(drop),
            tag => Err(UpdateCheckError::UnknownTag {
                what: "any",
                tag,
                at,
            }),
        }
    }

    /// Item content: its length in clock units, as yrs counts it, and whether it is a type.
    fn content(&mut self, info: u8) -> Result<(u64, bool), UpdateCheckError> {
        let at = self.pos;
        let len = match info & 0b1111 {
            1 => u64::from(self.var_u32()?),
            2 => {
                // yrs reads `count + 1` strings here (`while remaining >= 0`).
                let n = self.count()?;
                for _ in 0..=n {
                    self.string()?;
                }
                n as u64 + 1
            }
            3 => self.buf().map(|_| 1)?,
            4 => {
                let at = self.pos;
                let bytes = self.buf()?;
                let s = std::str::from_utf8(bytes).map_err(|_| UpdateCheckError::NotUtf8 { at })?;
                s.encode_utf16().count() as u64
            }
            5 => self.string().map(|()| 1)?,
            6 => {
                self.string()?;
                self.string().map(|()| 1)?
            }
            7 => {
                let type_at = self.pos;
                match self.u8()? {
                    0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => {}
                    3 => self.string()?,
                    tag => {
                        return Err(UpdateCheckError::UnknownTag {
                            what: "type",
                            tag,
                            at: type_at,
                        });
                    }
                }
                return Ok((1, true));
            }
            8 => {
                let n = self.count()?;
                for _ in 0..n {
                    self.any(0)?;
                }
                n as u64
            }
            9 => return Err(UpdateCheckError::Subdocument { at }),
            tag => {
                return Err(UpdateCheckError::UnknownTag {
                    what: "content",
                    tag,
                    at,
                });
            }
        };
        Ok((len, false))
    }

    /// One struct at `clock`.
    fn block(&mut self, clock: u32) -> Result<StructRec, UpdateCheckError> {
        const HAS_ORIGIN: u8 = 0b1000_0000;
        const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
        const HAS_PARENT_SUB: u8 = 0b0010_0000;
        let plain = |len: u32, kind: StructKind| StructRec {
            clock,
            len,
            kind,
            origin: None,
            right: None,
            parent: ParentRef::Inferred,
        };
        let info = self.u8()?;
        match info {
            0 => Ok(plain(self.var_u32()?, StructKind::Gc)),
            10 => Ok(plain(self.var_u32()?, StructKind::Skip)),
            _ => {
                let origin = if info & HAS_ORIGIN != 0 {
                    Some(self.id()?)
                } else {
                    None
                };
                let right = if info & HAS_RIGHT_ORIGIN != 0 {
                    Some(self.id()?)
                } else {
                    None
                };
                let mut parent = ParentRef::Inferred;
                if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
                    parent = if self.var_u64()? == 1 {
                        self.string()?;
                        ParentRef::Root
                    } else {
                        ParentRef::Item(self.id()?)
                    };
                    if info & HAS_PARENT_SUB != 0 {
                        self.string()?;
                    }
                }
                let (len, is_type) = self.content(info)?;
                let len = u32::try_from(len)
                    .map_err(|_| UpdateCheckError::ClockTooLarge { clock: len })?;
                Ok(StructRec {
                    clock,
                    len,
                    kind: StructKind::Item { is_type },
                    origin,
                    right,
                    parent,
                })
            }
        }
    }

    fn end(&self) -> Result<(), UpdateCheckError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(UpdateCheckError::TrailingBytes {
                at: self.pos,
                len: self.buf.len(),
            })
        }
    }
}

/// `start + len` as a clock, refused unless it fits in 32 bits.
fn clock_end(start: u32, len: u32) -> Result<u32, UpdateCheckError> {
    start
        .checked_add(len)
        .ok_or(UpdateCheckError::ClockTooLarge {
            clock: u64::from(start) + u64::from(len),
        })
}

/// Walks a whole Yjs v1 update, reporting what it holds to `visit`. Refuses it (with nothing
/// allocated but what `visit` keeps) under the rules in the module docs.
pub(crate) fn walk_update_v1(
    update: &[u8],
    visit: &mut impl Visit,
) -> Result<(), UpdateCheckError> {
    let mut r = Reader {
        buf: update,
        pos: 0,
    };
    for _ in 0..r.count()? {
        let structs = r.count()?;
        let client = r.client()?;
        let start = r.var_u32()?;
        visit.client(client, start, structs);
        let mut clock = start;
        for _ in 0..structs {
            let s = r.block(clock)?;
            clock = clock_end(clock, s.len)?;
            visit.structure(s);
        }
    }
    for _ in 0..r.count()? {
        let client = r.client()?;
        let ranges = r.count()?;
        for _ in 0..ranges {
            let clock = r.var_u32()?;
            let len = r.var_u32()?;
            clock_end(clock, len)?;
            visit.deleted(client, clock, len);
        }
    }
    r.end()
}

/// The clocks one client's structs in an update cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpan {
    /// The client whose structs these are.
    pub client: u32,
    /// Clock of the client's first struct in the update.
    pub start: u32,
    /// Ranges `(clock, len)` the update skips: structs after a skip build on clocks the update
    /// does not carry.
    pub skips: Vec<(u32, u32)>,
}

/// What [`check_update_v1`] learnt while walking an update.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateShape {
    /// Number of structs (items, GC and skip ranges).
    pub structs: usize,
    /// Number of deleted ranges in the delete set.
    pub deleted_ranges: usize,
    /// Per client header, the clocks its structs start at and skip.
    pub spans: Vec<ClientSpan>,
}

impl UpdateShape {
    /// Whether the update carries nothing at all.
    pub fn is_empty(&self) -> bool {
        self.structs == 0 && self.deleted_ranges == 0
    }
}

impl Visit for UpdateShape {
    fn client(&mut self, client: u32, start: u32, structs: usize) {
        self.structs += structs;
        self.spans.push(ClientSpan {
            client,
            start,
            skips: Vec::new(),
        });
    }

    fn structure(&mut self, s: StructRec) {
        if s.kind == StructKind::Skip
            && let Some(span) = self.spans.last_mut()
        {
            span.skips.push((s.clock, s.len));
        }
    }

    fn deleted(&mut self, _client: u32, _clock: u32, _len: u32) {
        self.deleted_ranges += 1;
    }
}

/// Every struct and deleted range of an update, grouped by client, for [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedUpdate {
    /// `(client, structs in clock order)`, in the order the update lists its clients.
    pub clients: Vec<(u32, Vec<StructRec>)>,
    /// `(client, clock, len)` of every deleted range.
    pub deleted: Vec<(u32, u32, u32)>,
}

impl Visit for ParsedUpdate {
    fn client(&mut self, client: u32, _start: u32, structs: usize) {
        self.clients.push((client, Vec::with_capacity(structs)));
    }

    fn structure(&mut self, s: StructRec) {
        if let Some((_, structs)) = self.clients.last_mut() {
            structs.push(s);
        }
    }

    fn deleted(&mut self, client: u32, clock: u32, len: u32) {
        self.deleted.push((client, clock, len));
    }
}

/// Walks a Yjs v1 update and refuses it if decoding it could allocate out of proportion to its
/// size, recurse without bound, or let a client id wider than 32 bits into a document.
pub fn check_update_v1(update: &[u8]) -> Result<UpdateShape, UpdateCheckError> {
    let mut shape = UpdateShape::default();
    walk_update_v1(update, &mut shape)?;
    Ok(shape)
}

/// [`check_update_v1`], keeping every struct for [`plan`].
pub(crate) fn parse_update_v1(update: &[u8]) -> Result<ParsedUpdate, UpdateCheckError> {
    let mut parsed = ParsedUpdate::default();
    walk_update_v1(update, &mut parsed)?;
    Ok(parsed)
}

/// Walks a Yjs v1 state vector (`count, (client, clock)*`) with the same guarantees as
/// [`check_update_v1`]. Returns the number of entries.
pub fn check_state_vector_v1(sv: &[u8]) -> Result<usize, UpdateCheckError> {
    let mut r = Reader { buf: sv, pos: 0 };
    let entries = r.count()?;
    for _ in 0..entries {
        r.client()?;
        r.var_u32()?;
    }
    r.end()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_bomb_is_refused() {
        let err = check_update_v1(&[0x9f, 0x9e, 0x97, 0x31]).unwrap_err();
        assert!(
            matches!(err, UpdateCheckError::CountTooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn subdocuments_are_refused() {
        // Found by the fuzzer: yrs decodes the subdocument and leaks its store.
        let leak = [1, 1, 45, 0, 9, 1, 1, 0, 0, 125, 0, 0, 19, 0];
        assert!(matches!(
            check_update_v1(&leak),
            Err(UpdateCheckError::Subdocument { .. })
        ));
    }

    #[test]
    fn empty_update_passes() {
        assert!(check_update_v1(&[0, 0]).unwrap().is_empty());
    }

    #[test]
    fn truncated_is_refused() {
        assert!(matches!(
            check_update_v1(&[1]),
            Err(UpdateCheckError::CountTooLarge { .. })
        ));
        assert!(matches!(
            check_update_v1(&[1, 0, 1]),
            Err(UpdateCheckError::Truncated { .. })
        ));
        assert!(matches!(
            check_update_v1(&[0x80]),
            Err(UpdateCheckError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(
            check_update_v1(&[0, 0, 7]),
            Err(UpdateCheckError::TrailingBytes { at: 2, len: 3 })
        );
        assert_eq!(
            check_state_vector_v1(&[1, 5, 3, 0]),
            Err(UpdateCheckError::TrailingBytes { at: 3, len: 4 })
        );
    }

    #[test]
    fn clock_ranges_must_end_within_32_bits() {
        // One client (1) starting at clock u32::MAX - 1 with a GC range of 5.
        let mut u = vec![1, 1, 1];
        u.extend([0xfe, 0xff, 0xff, 0xff, 0x0f]);
        u.extend([0, 5, 0]);
        assert!(matches!(
            check_update_v1(&u),
            Err(UpdateCheckError::ClockTooLarge { .. })
        ));
        // A deleted range that ends past u32::MAX.
        let mut ds = vec![0, 1, 1, 1];
        ds.extend([0xfe, 0xff, 0xff, 0xff, 0x0f]);
        ds.push(5);
        assert!(matches!(
            check_update_v1(&ds),
            Err(UpdateCheckError::ClockTooLarge { .. })
        ));
    }

    #[test]
    fn deep_any_is_refused() {
        // One client, one struct, client 1 clock 0, info = Any content (8) with a root parent.
        let mut u = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
        u.extend(std::iter::repeat_n(117u8, 200).flat_map(|t| [t, 1]));
        u.push(126);
        u.push(0);
        assert!(matches!(
            check_update_v1(&u),
            Err(UpdateCheckError::TooDeep { .. })
        ));
    }
}
