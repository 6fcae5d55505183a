//! A structural check of Yjs v1 updates before `yrs` decodes them.
//!
//! `yrs` trusts the counts an update declares and reserves memory for them up front: the four
//! bytes `9f 9e 97 31` declare ~103 million clients and make yrs 0.28.1 try to reserve ~5.5 GB.
//! [`check_update_v1`] walks the whole update without allocating, and refuses it unless
//! - every declared count fits in the bytes that remain (each element takes at least one byte),
//!   so whatever yrs then allocates is bounded by the input size;
//! - nested `Any` values are at most [`MAX_ANY_DEPTH`] deep, so decoding cannot blow the stack;
//! - every client id fits in 32 bits (see [`ReplicaId`](crate::ReplicaId)): stock Yjs clients
//!   before v14 expect that, and one wider id would make the document unreadable to them;
//! - strings are UTF-8 and every content and type tag is one Yjs defines.
//!
//! The walk mirrors how `yrs` 0.28.1 itself reads update v1 (`clients, (structs, client, clock,
//! struct*)*, delete set`), byte for byte, including where it differs from Yjs: GC and skip
//! structs are recognised by the whole info byte, JSON content holds one string more than its
//! count, and an XML hook type carries no name. A walk that disagreed with yrs about where a
//! struct ends would check other bytes than yrs reads, and the size bound would not hold.

/// Deepest nesting of `Any` arrays and maps accepted inside an update.
pub const MAX_ANY_DEPTH: usize = 128;

/// Why an update was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateCheckError {
    #[error("update ends early at byte {at}")]
    Truncated { at: usize },
    #[error("variable-length integer too long at byte {at}")]
    VarIntOverflow { at: usize },
    #[error("count {count} at byte {at} exceeds the {remaining} bytes that remain")]
    CountTooLarge {
        count: u64,
        remaining: usize,
        at: usize,
    },
    #[error("client id {client} is wider than 32 bits; Yjs clients before v14 cannot read it")]
    ClientIdTooWide { client: u64 },
    #[error("clock {clock} does not fit in 32 bits")]
    ClockTooLarge { clock: u64 },
    #[error("unknown {what} tag {tag} at byte {at}")]
    UnknownTag {
        what: &'static str,
        tag: u8,
        at: usize,
    },
    #[error("string at byte {at} is not UTF-8")]
    NotUtf8 { at: usize },
    #[error("values nested deeper than {MAX_ANY_DEPTH} at byte {at}")]
    TooDeep { at: usize },
    /// Subdocuments are not synced by Lattice, and yrs 0.28.1 leaks every subdocument it
    /// decodes (a reference cycle through the parent store), so a peer could grow the server's
    /// memory at will by sending them.
    #[error("subdocument content at byte {at} is not supported")]
    Subdocument { at: usize },
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

    fn client(&mut self) -> Result<(), UpdateCheckError> {
        let client = self.var_u64()?;
        if client > u64::from(u32::MAX) {
            return Err(UpdateCheckError::ClientIdTooWide { client });
        }
        Ok(())
    }

    fn id(&mut self) -> Result<(), UpdateCheckError> {
        self.client()?;
        self.var_u32()?;
        Ok(())
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

    /// Item content; returns its length in clock units, as yrs counts it.
    fn content(&mut self, info: u8) -> Result<u64, UpdateCheckError> {
        let at = self.pos;
        match info & 0b1111 {
            1 => self.var_u32().map(u64::from),
            2 => {
                // yrs reads `count + 1` strings here (`while remaining >= 0`).
                let n = self.count()?;
                for _ in 0..=n {
                    self.string()?;
                }
                Ok(n as u64 + 1)
            }
            3 => self.buf().map(|_| 1),
            4 => {
                let at = self.pos;
                let bytes = self.buf()?;
                let s = std::str::from_utf8(bytes).map_err(|_| UpdateCheckError::NotUtf8 { at })?;
                Ok(s.encode_utf16().count() as u64)
            }
            5 => self.string().map(|()| 1),
            6 => {
                self.string()?;
                self.string().map(|()| 1)
            }
            7 => {
                let type_at = self.pos;
                match self.u8()? {
                    0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => Ok(1),
                    3 => self.string().map(|()| 1),
                    tag => Err(UpdateCheckError::UnknownTag {
                        what: "type",
                        tag,
                        at: type_at,
                    }),
                }
            }
            8 => {
                let n = self.count()?;
                for _ in 0..n {
                    self.any(0)?;
                }
                Ok(n as u64)
            }
            9 => Err(UpdateCheckError::Subdocument { at }),
            tag => Err(UpdateCheckError::UnknownTag {
                what: "content",
                tag,
                at,
            }),
        }
    }

    /// One struct and its length in clock units.
    fn block(&mut self) -> Result<Block, UpdateCheckError> {
        const HAS_ORIGIN: u8 = 0b1000_0000;
        const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
        const HAS_PARENT_SUB: u8 = 0b0010_0000;
        let info = self.u8()?;
        match info {
            0 => Ok(Block::Other(u64::from(self.var_u32()?))),
            10 => Ok(Block::Skip(self.var_u32()?)),
            _ => {
                if info & HAS_ORIGIN != 0 {
                    self.id()?;
                }
                if info & HAS_RIGHT_ORIGIN != 0 {
                    self.id()?;
                }
                if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
                    if self.var_u64()? == 1 {
                        self.string()?;
                    } else {
                        self.id()?;
                    }
                    if info & HAS_PARENT_SUB != 0 {
                        self.string()?;
                    }
                }
                self.content(info).map(Block::Other)
            }
        }
    }
}

enum Block {
    Skip(u32),
    Other(u64),
}

/// The clocks one client's structs in an update cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpan {
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

/// Walks a Yjs v1 update and refuses it if decoding it could allocate out of proportion to its
/// size, recurse without bound, or let a client id wider than 32 bits into a document.
pub fn check_update_v1(update: &[u8]) -> Result<UpdateShape, UpdateCheckError> {
    let mut r = Reader {
        buf: update,
        pos: 0,
    };
    let mut shape = UpdateShape::default();
    for _ in 0..r.count()? {
        let structs = r.count()?;
        let client = r.var_u64()?;
        let client =
            u32::try_from(client).map_err(|_| UpdateCheckError::ClientIdTooWide { client })?;
        let start = r.var_u32()?;
        let mut span = ClientSpan {
            client,
            start,
            skips: Vec::new(),
        };
        let mut clock = u64::from(start);
        for _ in 0..structs {
            match r.block()? {
                Block::Skip(len) => {
                    span.skips
                        .push((u32::try_from(clock).unwrap_or(u32::MAX), len));
                    clock += u64::from(len);
                }
                Block::Other(len) => clock += len,
            }
        }
        shape.structs += structs;
        shape.spans.push(span);
    }
    for _ in 0..r.count()? {
        r.client()?;
        let ranges = r.count()?;
        for _ in 0..ranges {
            r.var_u32()?;
            r.var_u32()?;
        }
        shape.deleted_ranges += ranges;
    }
    Ok(shape)
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
