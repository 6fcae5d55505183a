//! The binary format of one SQLite `update_runs` row: consecutive log entries of one document.
//!
//! The SQLite log stores a *run* of entries per row (`first_seq ..= last_seq`, dense), so a
//! journal drain inserts one row per document instead of one per entry (see `sqlite/drain.rs`). The
//! row's `entries` blob is versioned by its first byte. Integers are **big-endian** here (the
//! journal's are little-endian): migration 0003 builds one-entry runs from the old `updates`
//! table in SQL, where `unhex(printf('%016x', n))` is the natural way to write an integer.
//!
//! ```text
//! run   := 0x01 entries                         (format 1: as it is)
//!        | 0x02 u32 raw_len zstd(entries)       (format 2, schema 4: compressed; the frame
//!                                                holds exactly raw_len bytes of `entries`)
//! entries := entry*                             (entry i has seq first_seq + i)
//! entry := u64 hlc, u32 replica, u64 committed_at_ms,
//!          u8 has_author (0 or 1), [u32 author_len, author (UTF-8)],
//!          u32 delta_len, delta (an engine Delta, rmp_serde::to_vec_named)
//! ```
//!
//! A run is built in format 1 ([`begin`], [`push`]) and [`seal`]ed: compressed to format 2
//! when that makes it smaller and its entries are at most [`RUN_MAX_PACKED_BYTES`]. Readers
//! read both formats, so rows written before schema 4 stay as they are.
//!
//! Decoding checks every length against what is left and the entry count against the row's
//! sequence range, so a damaged row is an error, never a panic or an oversized allocation.

use std::borrow::Cow;

use super::compress::{Packer, decompress};
use super::journal::{Order, Reader, begin_version, put_author_and_delta};

/// Format 1: the entries as they are (the format [`begin`] starts).
const PLAIN: u8 = 1;
/// Format 2: the entries compressed with zstd, after their length.
const PACKED: u8 = 2;

/// Most entries one run holds: a drain cuts a document's entries into runs of at most this
/// many (and [`RUN_MAX_BYTES`]), so that reading a few entries never decodes a huge row.
pub(crate) const RUN_MAX_ENTRIES: usize = 1_024;
/// Most delta bytes one run holds (a single larger entry gets a run of its own).
pub(crate) const RUN_MAX_BYTES: usize = 256 * 1024;
/// Most bytes of entries a format-2 run may hold once decompressed. A run within
/// [`RUN_MAX_ENTRIES`] and [`RUN_MAX_BYTES`] stays below it (unless its authors' names are
/// hundreds of bytes long); a larger one (a single large entry) is stored in format 1, and a
/// reader refuses a format-2 row that claims more, so what a stored header says can never make
/// it allocate more than this.
pub const RUN_MAX_PACKED_BYTES: usize = 1024 * 1024;
/// Runs smaller than this are not worth a zstd frame (its header alone is about 10 bytes).
const RUN_MIN_PACKED_BYTES: usize = 64;

/// One entry of a run; the strings and bytes borrow from the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry<'a> {
    pub seq: u64,
    pub hlc: u64,
    pub replica: u32,
    pub committed_at_ms: u64,
    pub author: Option<&'a str>,
    pub delta: &'a [u8],
}

/// Starts a run.
pub fn begin(capacity: usize) -> Vec<u8> {
    begin_version(PLAIN, capacity)
}

/// Appends one entry to a run started with [`begin`]; its `seq` is implied by its position.
pub fn push(out: &mut Vec<u8>, e: &RunEntry<'_>) {
    out.extend_from_slice(&e.hlc.to_be_bytes());
    out.extend_from_slice(&e.replica.to_be_bytes());
    out.extend_from_slice(&e.committed_at_ms.to_be_bytes());
    put_author_and_delta(out, e.author, e.delta, Order::Big);
}

/// A run built with [`begin`] and [`push`], as it is stored: compressed (format 2) when
/// that makes it smaller and its entries fit in [`RUN_MAX_PACKED_BYTES`], else unchanged.
pub fn seal(packer: &mut Packer, run: Vec<u8>) -> Vec<u8> {
    let entries = run.get(1..).unwrap_or_default();
    if run.first() != Some(&PLAIN)
        || entries.len() < RUN_MIN_PACKED_BYTES
        || entries.len() > RUN_MAX_PACKED_BYTES
    {
        return run;
    }
    match packer.compress(entries) {
        Some(frame) if frame.len() + 5 < run.len() => {
            let mut out = Vec::with_capacity(frame.len() + 5);
            out.push(PACKED);
            out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            out.extend_from_slice(&frame);
            out
        }
        _ => run,
    }
}

/// The entries of a stored run, in the format-1 layout without its version byte: borrowed
/// from a format-1 row, decompressed from a format-2 one.
pub fn entries_of(payload: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        PLAIN => Ok(Cow::Borrowed(&payload[1..])),
        PACKED => {
            let raw_len = r.u32_be()? as usize;
            if raw_len > RUN_MAX_PACKED_BYTES {
                return Err(format!(
                    "a compressed run of {raw_len} bytes (at most {RUN_MAX_PACKED_BYTES})"
                ));
            }
            decompress(&payload[r.at()..], raw_len).map(Cow::Owned)
        }
        v => Err(format!("unknown run format version {v}")),
    }
}

/// Decodes the run stored as `first ..= last` from its entries ([`entries_of`]). It must hold
/// exactly that many entries.
pub fn decode(first: u64, last: u64, payload: &[u8]) -> Result<Vec<RunEntry<'_>>, String> {
    let expected = last
        .checked_sub(first)
        .and_then(|n| n.checked_add(1))
        .filter(|_| first > 0)
        .ok_or_else(|| format!("bad sequence range {first}..={last}"))?;
    let mut r = Reader::new(payload);
    // Every entry takes at least 25 bytes: a count the payload cannot hold is refused before
    // anything is allocated for it.
    if expected > (payload.len() / 25) as u64 {
        return Err(format!(
            "{} bytes cannot hold {expected} entries",
            payload.len()
        ));
    }
    let mut out = Vec::with_capacity(expected as usize);
    while !r.done() {
        if out.len() as u64 == expected {
            return Err(format!("more than {expected} entries"));
        }
        // `first + k` for the k-th entry stays at or below `last`: no overflow, whatever the
        // range (a stored range is at most `i64::MAX`, a fuzzed one may end at `u64::MAX`).
        let seq = first + out.len() as u64;
        let hlc = r.u64_be()?;
        let replica = r.u32_be()?;
        let committed_at_ms = r.u64_be()?;
        let author = match r.u8()? {
            0 => None,
            1 => Some(r.str_be()?),
            f => return Err(format!("bad author flag {f} at byte {}", r.at() - 1)),
        };
        let delta = r.bytes_be()?;
        out.push(RunEntry {
            seq,
            hlc,
            replica,
            committed_at_ms,
            author,
            delta,
        });
    }
    if out.len() as u64 != expected {
        return Err(format!("{} entries, expected {expected}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<RunEntry<'static>> {
        vec![
            RunEntry {
                seq: 7,
                hlc: u64::MAX,
                replica: 7,
                committed_at_ms: 1_700_000_000_000,
                author: None,
                delta: b"\x81\xa3yjs\xc4\x00",
            },
            RunEntry {
                seq: 8,
                hlc: 0,
                replica: u32::MAX,
                committed_at_ms: 0,
                author: Some("alice"),
                delta: b"",
            },
        ]
    }

    fn encode(entries: &[RunEntry<'_>]) -> Vec<u8> {
        let mut out = begin(0);
        for e in entries {
            push(&mut out, e);
        }
        out
    }

    /// Decodes a stored row, whatever its format.
    fn read(first: u64, last: u64, payload: &[u8]) -> Result<Vec<RunEntry<'static>>, String> {
        let entries = entries_of(payload)?;
        let decoded = decode(first, last, &entries)?;
        // Owned copies, so the test can drop the decompressed buffer.
        Ok(decoded
            .into_iter()
            .map(|e| RunEntry {
                author: e.author.map(|a| &*a.to_owned().leak()),
                delta: &*e.delta.to_vec().leak(),
                ..e
            })
            .collect())
    }

    #[test]
    fn round_trips() {
        let out = encode(&sample());
        assert_eq!(read(7, 8, &out).expect("decode"), sample());
        let one = encode(&sample()[..1]);
        assert_eq!(read(7, 7, &one).expect("one"), sample()[..1]);
    }

    /// A run of similar entries is sealed into format 2, much smaller, and reads back the same;
    /// a tiny run stays in format 1.
    #[test]
    fn sealed_runs_are_compressed_and_read_back() {
        let many: Vec<RunEntry<'static>> = (0..500u64)
            .map(|i| RunEntry {
                seq: 100 + i,
                hlc: 0x6553_f100_0000_0000 + i * 7,
                replica: 42,
                committed_at_ms: 1_700_000_000_000 + i / 10,
                author: (i % 3 == 0).then_some("alice"),
                delta: b"\x81\xa3yjs\xc4\x0c\x01\x01\xd2\x09\x00\x84\xd2\x09\x00\x01a\x00",
            })
            .collect();
        let plain = encode(&many);
        let mut packer = Packer::new();
        let sealed = seal(&mut packer, plain.clone());
        assert_eq!(sealed[0], PACKED);
        assert!(
            sealed.len() * 5 < plain.len(),
            "{} of {}",
            sealed.len(),
            plain.len()
        );
        assert_eq!(read(100, 599, &sealed).expect("decode"), many);
        assert!(read(100, 600, &sealed).is_err());
        let small = encode(&sample()[..1]);
        assert_eq!(seal(&mut packer, small.clone()), small);
        // Damage inside the compressed part is an error, never a panic.
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x55;
            let _ = read(100, 599, &bad);
        }
        for cut in 0..sealed.len() {
            assert!(
                read(100, 599, &sealed[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
        // A compressed run claiming more than the most a sealed run holds is refused before
        // anything is allocated for it.
        let mut huge = vec![PACKED];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&sealed[5..]);
        assert!(entries_of(&huge).expect_err("huge").contains("at most"));
    }

    #[test]
    fn the_range_must_match_the_entries() {
        let out = encode(&sample());
        assert!(read(7, 9, &out).is_err());
        assert!(read(7, 7, &out).is_err());
        assert!(read(8, 7, &out).is_err());
        assert!(read(0, 1, &out).is_err());
        assert!(
            read(1, u64::MAX, &out)
                .expect_err("huge")
                .contains("cannot hold")
        );
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let out = encode(&sample());
        for cut in 0..out.len() {
            assert!(read(7, 8, &out[..cut]).is_err(), "cut at {cut} decoded");
        }
        assert!(read(7, 8, &[3]).expect_err("version").contains("version 3"));
        for i in 1..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0xff;
            let _ = read(7, 8, &bad);
        }
        // A length that claims far more than the payload holds is refused, not allocated.
        let mut huge = begin(0);
        huge.extend_from_slice(&[0; 21]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read(1, 1, &huge).expect_err("huge").contains("truncated"));
    }

    /// Migration 0003 writes one-entry runs with SQL; this is the layout it must produce.
    #[test]
    fn layout_matches_the_migration() {
        let e = RunEntry {
            seq: 1,
            hlc: 0x0102_0304_0506_0708,
            replica: 0x0a0b_0c0d,
            committed_at_ms: 0x11,
            author: Some("é"),
            delta: &[0xc0],
        };
        let hex: String = encode(&[e]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "01\
             0102030405060708\
             0a0b0c0d\
             0000000000000011\
             01\
             00000002c3a9\
             00000001c0"
        );
    }
}
