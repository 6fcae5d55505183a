//! The part of MessagePack the protocol uses: a writer that picks the shortest form of every
//! integer, string, byte string and length (as `rmp` does, so the bytes are those
//! `rmp_serde::to_vec_named` wrote), and a reader over a byte slice that never reads past its
//! end, never allocates and, in [`Reader::skip`], bounds nesting.

use super::MAX_NESTING;

/// Why bytes did not read as the value expected; the `reason` of a
/// [`DecodeError`](super::DecodeError). Type and value errors are worded as serde worded them,
/// so that peers and logs read what they read before.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fault {
    #[error("unexpected end of input")]
    End,
    #[error("depth limit exceeded")]
    TooDeep,
    #[error("reserved MessagePack marker 0xc1")]
    Reserved,
    // What was found is boxed: every `Result` of the codec carries a `Fault`, so its size counts.
    #[error("invalid type: {found}, expected {expected}")]
    Type {
        found: Box<Found>,
        expected: &'static str,
    },
    #[error("invalid value: {found}, expected {expected}")]
    Value {
        found: Box<Found>,
        expected: &'static str,
    },
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("duplicate field `{0}`")]
    Duplicate(&'static str),
    #[error("{0}")]
    Bad(&'static str),
    #[error(transparent)]
    DocId(#[from] crate::DocIdError),
}

impl Fault {
    /// `item` where something else was `expected` (serde's name for it: `u32`, `a string`…).
    pub(super) fn unexpected(item: Item<'_>, expected: &'static str) -> Self {
        Fault::Type {
            found: Box::new(Found::from(item)),
            expected,
        }
    }
}

/// What a value turned out to be, in serde's words (floats without their value, which would
/// compile float formatting into the browser client).
#[derive(Debug)]
pub(super) enum Found {
    Unit,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Seq,
    Map,
    Ext,
}

impl From<Item<'_>> for Found {
    fn from(item: Item<'_>) -> Self {
        match item {
            Item::Nil => Found::Unit,
            Item::Bool(b) => Found::Bool(b),
            Item::Uint(v) => Found::Uint(v),
            Item::Int(v) => Found::Int(v),
            Item::F32(_) | Item::F64(_) => Found::Float,
            Item::Str(b) => std::str::from_utf8(b).map_or(Found::Bytes, |s| Found::Str(s.into())),
            Item::Bin(_) => Found::Bytes,
            Item::Array(_) => Found::Seq,
            Item::Map(_) => Found::Map,
            Item::Ext => Found::Ext,
        }
    }
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Unit => f.write_str("unit value"),
            Found::Bool(b) => write!(f, "boolean `{b}`"),
            Found::Uint(v) => write!(f, "integer `{v}`"),
            // Through `u64`'s formatting, which the module has anyway.
            Found::Int(v) if *v < 0 => write!(f, "integer `-{}`", v.unsigned_abs()),
            Found::Int(v) => write!(f, "integer `{}`", v.unsigned_abs()),
            Found::Float => f.write_str("floating point"),
            Found::Str(s) => write!(f, "string {s:?}"),
            Found::Bytes => f.write_str("byte array"),
            Found::Seq => f.write_str("sequence"),
            Found::Map => f.write_str("map"),
            Found::Ext => f.write_str("newtype struct"),
        }
    }
}

/// One MessagePack item: a scalar, a string or byte string (borrowed from the input), or the
/// header of an array or map, whose elements follow.
#[derive(Debug, Clone, Copy)]
pub(super) enum Item<'a> {
    Nil,
    Bool(bool),
    /// A non-negative integer written with an unsigned marker (or as a positive fixint).
    Uint(u64),
    /// An integer written with a signed marker (or as a negative fixint); it may be positive.
    Int(i64),
    F32(f32),
    F64(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(u32),
    Map(u32),
    /// An extension value: the protocol has none, a reader only skips them.
    Ext,
}

/// Reads MessagePack from a byte slice.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// A reader of `bytes` from `pos` on.
    pub(super) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Reader { bytes, pos }
    }

    /// Where the next item starts.
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let end = self.pos.checked_add(n).ok_or(Fault::End)?;
        let out = self.bytes.get(self.pos..end).ok_or(Fault::End)?;
        self.pos = end;
        Ok(out)
    }

    /// The next `n` bytes (at most 8) as a big-endian number.
    fn be(&mut self, n: usize) -> Result<u64, Fault> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0, |acc, b| acc << 8 | u64::from(*b)))
    }

    /// A length of `width` bytes.
    fn len(&mut self, width: usize) -> Result<usize, Fault> {
        // At most 32 bits: fits a `usize` on every target the engine builds for.
        Ok(self.be(width)? as usize)
    }

    /// Reads the next item; a string, byte string or extension is read whole.
    pub(super) fn item(&mut self) -> Result<Item<'a>, Fault> {
        // The casts keep the low bytes `be` read: the two's complement of signed integers,
        // the bits of floats.
        let marker = self.be(1)? as u8;
        Ok(match marker {
            0x00..=0x7f => Item::Uint(u64::from(marker)),
            0x80..=0x8f => Item::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Item::Nil,
            0xc1 => return Err(Fault::Reserved),
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Item::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                self.take(n.saturating_add(1))?;
                Item::Ext
            }
            0xca => Item::F32(f32::from_bits(self.be(4)? as u32)),
            0xcb => Item::F64(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Item::Uint(self.be(1 << (marker - 0xcc))?),
            0xd0 => Item::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Item::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Item::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Item::Int(self.be(8)? as i64),
            0xd4..=0xd8 => {
                self.take((1 << (marker - 0xd4)) + 1)?;
                Item::Ext
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Item::Str(self.take(n)?)
            }
            0xdc | 0xdd => Item::Array(self.len(2 << (marker - 0xdc))? as u32),
            0xde | 0xdf => Item::Map(self.len(2 << (marker - 0xde))? as u32),
            0xe0..=0xff => Item::Int(i64::from(marker as i8)),
        })
    }

    /// Skips one value, checking that it is complete and that its arrays, maps and extension
    /// values nest fewer than [`MAX_NESTING`] deep, counting the `depth` containers around it
    /// (rmp-serde's `set_max_depth`, which counted extension values as containers too).
    pub(super) fn skip(&mut self, depth: usize) -> Result<(), Fault> {
        let item = self.item()?;
        let (Item::Array(n) | Item::Map(n)) = item else {
            return match item {
                Item::Ext if depth + 1 >= MAX_NESTING => Err(Fault::TooDeep),
                _ => Ok(()),
            };
        };
        if depth + 1 >= MAX_NESTING {
            return Err(Fault::TooDeep);
        }
        let values = if matches!(item, Item::Map(_)) {
            u64::from(n) * 2
        } else {
            u64::from(n)
        };
        for _ in 0..values {
            self.skip(depth + 1)?;
        }
        Ok(())
    }

    /// The header of a map (`expected` names what it holds): its number of entries.
    pub(super) fn map(&mut self, expected: &'static str) -> Result<u32, Fault> {
        match self.item()? {
            Item::Map(n) => Ok(n),
            other => Err(Fault::unexpected(other, expected)),
        }
    }

    /// A key of a struct's map as raw bytes (a string or a byte string).
    pub(super) fn key(&mut self) -> Result<&'a [u8], Fault> {
        match self.item()? {
            Item::Str(b) | Item::Bin(b) => Ok(b),
            other => Err(Fault::unexpected(other, "field identifier")),
        }
    }

    /// A UTF-8 string, written as a string or a byte string.
    pub(super) fn str(&mut self) -> Result<&'a str, Fault> {
        match self.item()? {
            Item::Str(b) | Item::Bin(b) => std::str::from_utf8(b).map_err(|_| Fault::Value {
                found: Box::new(Found::Bytes),
                expected: "a string",
            }),
            other => Err(Fault::unexpected(other, "a string")),
        }
    }

    /// A non-negative integer up to `max`, however wide its encoding; `expected` names its type.
    fn uint(&mut self, max: u64, expected: &'static str) -> Result<u64, Fault> {
        let out_of_range = |found| Fault::Value {
            found: Box::new(found),
            expected,
        };
        match self.item()? {
            Item::Uint(v) if v <= max => Ok(v),
            Item::Uint(v) => Err(out_of_range(Found::Uint(v))),
            Item::Int(v) => match u64::try_from(v) {
                Ok(v) if v <= max => Ok(v),
                _ => Err(out_of_range(Found::Int(v))),
            },
            other => Err(Fault::unexpected(other, expected)),
        }
    }

    pub(super) fn u64(&mut self) -> Result<u64, Fault> {
        self.uint(u64::MAX, "u64")
    }

    pub(super) fn u32(&mut self) -> Result<u32, Fault> {
        // In range: `uint` checked it.
        Ok(self.uint(u64::from(u32::MAX), "u32")? as u32)
    }

    pub(super) fn bool(&mut self) -> Result<bool, Fault> {
        match self.item()? {
            Item::Bool(b) => Ok(b),
            other => Err(Fault::unexpected(other, "a boolean")),
        }
    }

    /// `nil` (consumed, `true`) or something else (left unread, `false`).
    pub(super) fn nil(&mut self) -> Result<bool, Fault> {
        let nil = self.bytes.get(self.pos) == Some(&0xc0);
        self.pos += usize::from(nil);
        Ok(nil)
    }

    /// Bytes, written as a byte string, a string or an array of integers up to 255.
    pub(super) fn bytes(&mut self) -> Result<Vec<u8>, Fault> {
        match self.item()? {
            Item::Bin(b) | Item::Str(b) => Ok(b.to_vec()),
            // In range: `uint` checked it.
            Item::Array(n) => (0..n)
                .map(|_| Ok(self.uint(u64::from(u8::MAX), "u8")? as u8))
                .collect(),
            other => Err(Fault::unexpected(other, "byte array")),
        }
    }
}

// Writing: each value appended to a `Vec<u8>` in its shortest form, as `rmp` writes it.

pub(super) fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v < 0x100 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 0x1_0000 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 0x1_0000_0000 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_be_bytes());
}

pub(super) fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(0xc2 | u8::from(v));
}

pub(super) fn write_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// A length too long for the fixed and 8-bit forms: `marker16` and two bytes, or the next
/// marker and four bytes. Lengths beyond `u32` cannot be written; `rmp` truncated them alike, and
/// no frame comes near.
fn write_wide_len(out: &mut Vec<u8>, len: usize, marker16: u8) {
    match u16::try_from(len) {
        Ok(len) => {
            out.push(marker16);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            out.push(marker16 + 1);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

pub(super) fn write_map_len(out: &mut Vec<u8>, len: usize) {
    if len < 16 {
        out.push(0x80 | len as u8);
    } else {
        write_wide_len(out, len, 0xde);
    }
}

pub(super) fn write_array_len(out: &mut Vec<u8>, len: usize) {
    if len < 16 {
        out.push(0x90 | len as u8);
    } else {
        write_wide_len(out, len, 0xdc);
    }
}

pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else {
        write_wide_len(out, len, 0xda);
    }
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    let len = b.len();
    if len < 0x100 {
        out.extend_from_slice(&[0xc4, len as u8]);
    } else {
        write_wide_len(out, len, 0xc5);
    }
    out.extend_from_slice(b);
}
