//! The binary format of one SQLite `journal` row: every entry of one group-commit transaction.
//!
//! The row is written once and read back when the store moves it into the log, `update_runs` (see
//! `sqlite/drain.rs`); nothing else reads it. The format is versioned by its first byte so a later
//! build can still drain rows an older one wrote. All integers are little-endian.
//!
//! ```text
//! payload := 0x01 entry*
//! entry   := u32 doc_len, doc (UTF-8), u64 seq, u64 hlc, u32 replica,
//!            u8 has_author (0 or 1), [u32 author_len, author (UTF-8)],
//!            u32 delta_len, delta (an engine Delta, as in `updates.delta`)
//! ```
//!
//! Decoding checks every length against what is left, so a damaged row is an error naming the
//! byte offset, never a panic or an oversized allocation.

/// The only version written so far.
const VERSION: u8 = 1;

/// One entry as stored in a journal row; the strings and bytes borrow from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry<'a> {
    pub doc: &'a str,
    pub seq: u64,
    pub hlc: u64,
    pub replica: u32,
    pub author: Option<&'a str>,
    pub delta: &'a [u8],
}

/// Starts a payload.
pub fn begin(capacity: usize) -> Vec<u8> {
    begin_version(VERSION, capacity)
}

/// A buffer for `capacity` bytes of a stored format, holding its `version` byte.
pub(super) fn begin_version(version: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 1);
    out.push(version);
    out
}

/// Appends one entry to a payload started with [`begin`].
pub fn push(out: &mut Vec<u8>, e: &JournalEntry<'_>) {
    put_bytes(out, e.doc.as_bytes(), Order::Little);
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&e.hlc.to_le_bytes());
    out.extend_from_slice(&e.replica.to_le_bytes());
    put_author_and_delta(out, e.author, e.delta, Order::Little);
}

/// Byte order of a stored format's integers (the journal's are little-endian, the runs' big).
#[derive(Debug, Clone, Copy)]
pub(super) enum Order {
    Little,
    Big,
}

/// `u8 has_author, [u32 author_len, author], u32 delta_len, delta`: the tail of an entry in
/// both the journal and the run format.
pub(super) fn put_author_and_delta(
    out: &mut Vec<u8>,
    author: Option<&str>,
    delta: &[u8],
    order: Order,
) {
    match author {
        Some(a) => {
            out.push(1);
            put_bytes(out, a.as_bytes(), order);
        }
        None => out.push(0),
    }
    put_bytes(out, delta, order);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8], order: Order) {
    // Document ids and authors are at most a few hundred bytes and deltas are bounded by the
    // frame limit, far below 4 GiB; a longer slice would be a bug upstream, and is cut rather
    // than panic.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&match order {
        Order::Little => len.to_le_bytes(),
        Order::Big => len.to_be_bytes(),
    });
    out.extend_from_slice(&b[..len as usize]);
}

/// Decodes a whole payload.
pub fn decode(payload: &[u8]) -> Result<Vec<JournalEntry<'_>>, String> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        VERSION => {}
        v => return Err(format!("unknown journal format version {v}")),
    }
    let mut out = Vec::new();
    while !r.done() {
        let doc = r.str()?;
        let seq = r.u64()?;
        let hlc = r.u64()?;
        let replica = r.u32()?;
        let author = match r.u8()? {
            0 => None,
            1 => Some(r.str()?),
            f => return Err(format!("bad author flag {f} at byte {}", r.at - 1)),
        };
        let delta = r.bytes()?;
        out.push(JournalEntry {
            doc,
            seq,
            hlc,
            replica,
            author,
            delta,
        });
    }
    Ok(out)
}

/// A bounds-checked cursor over a stored payload (shared with [`super::runs`]).
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Whether every byte has been read.
    pub(super) fn done(&self) -> bool {
        self.at >= self.buf.len()
    }

    /// The offset of the next byte, for error messages.
    pub(super) fn at(&self) -> usize {
        self.at
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(super) fn u32_be(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64_be(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32` length, then that many bytes.
    pub(super) fn bytes_be(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32_be()? as usize;
        self.take(len)
    }

    /// [`Self::bytes_be`] holding UTF-8.
    pub(super) fn str_be(&mut self) -> Result<&'a str, String> {
        let at = self.at;
        std::str::from_utf8(self.bytes_be()?).map_err(|e| format!("bad UTF-8 at byte {at}: {e}"))
    }

    pub(super) fn str(&mut self) -> Result<&'a str, String> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("bad UTF-8 at byte {at}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<JournalEntry<'static>> {
        vec![
            JournalEntry {
                doc: "notes/a",
                seq: 1,
                hlc: u64::MAX,
                replica: 7,
                author: None,
                delta: b"\x81\xa3yjs\xc4\x00",
            },
            JournalEntry {
                doc: "b",
                seq: 1 << 40,
                hlc: 0,
                replica: u32::MAX,
                author: Some("alice"),
                delta: b"",
            },
        ]
    }

    #[test]
    fn round_trips() {
        let mut out = begin(0);
        for e in sample() {
            push(&mut out, &e);
        }
        assert_eq!(decode(&out).expect("decode"), sample());
        assert_eq!(decode(&begin(0)).expect("empty"), Vec::new());
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut out = begin(0);
        let mut boundaries = vec![out.len()];
        for e in sample() {
            push(&mut out, &e);
            boundaries.push(out.len());
        }
        // A cut at an entry boundary is a shorter valid payload; any other cut is an error.
        for cut in 0..=out.len() {
            match boundaries.iter().position(|b| *b == cut) {
                Some(n) => assert_eq!(decode(&out[..cut]).expect("prefix"), sample()[..n]),
                None => assert!(decode(&out[..cut]).is_err(), "cut at {cut} decoded"),
            }
        }
        assert!(decode(&[2]).expect_err("version").contains("version 2"));
        // Flipped bytes never panic; the ones in a length or flag field are errors.
        for i in 1..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
        let mut bad = out.clone();
        bad[1] ^= 0xff; // the first document id's length
        assert!(decode(&bad).is_err());
        // A length that claims far more than the payload holds is refused, not allocated.
        let mut huge = begin(0);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).expect_err("huge").contains("truncated"));
    }
}
