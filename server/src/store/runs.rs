//! The binary format of one SQLite `update_runs` row: consecutive log entries of one document.
//!
//! The SQLite log stores a *run* of entries per row (`first_seq ..= last_seq`, dense), so a
//! journal drain inserts one row per document instead of one per entry (see `sqlite/drain.rs`). The
//! row's `entries` blob is versioned by its first byte. Integers are **big-endian** here (the
//! journal's are little-endian): migration 0003 builds one-entry runs from the old `updates`
//! table in SQL, where `unhex(printf('%016x', n))` is the natural way to write an integer.
//!
//! ```text
//! run   := 0x01 entry*                          (entry i has seq first_seq + i)
//! entry := u64 hlc, u32 replica, u64 committed_at_ms,
//!          u8 has_author (0 or 1), [u32 author_len, author (UTF-8)],
//!          u32 delta_len, delta (an engine Delta, rmp_serde::to_vec_named)
//! ```
//!
//! Decoding checks every length against what is left and the entry count against the row's
//! sequence range, so a damaged row is an error, never a panic or an oversized allocation.

use super::journal::{Order, Reader, begin_version, put_author_and_delta};

/// The only version written so far.
const VERSION: u8 = 1;

/// Most entries one run holds: a drain cuts a document's entries into runs of at most this
/// many (and [`RUN_MAX_BYTES`]), so that reading a few entries never decodes a huge row.
pub(crate) const RUN_MAX_ENTRIES: usize = 1_024;
/// Most delta bytes one run holds (a single larger entry gets a run of its own).
pub(crate) const RUN_MAX_BYTES: usize = 256 * 1024;

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
    begin_version(VERSION, capacity)
}

/// Appends one entry to a run started with [`begin`]; its `seq` is implied by its position.
pub fn push(out: &mut Vec<u8>, e: &RunEntry<'_>) {
    out.extend_from_slice(&e.hlc.to_be_bytes());
    out.extend_from_slice(&e.replica.to_be_bytes());
    out.extend_from_slice(&e.committed_at_ms.to_be_bytes());
    put_author_and_delta(out, e.author, e.delta, Order::Big);
}

/// Decodes the run stored as `first ..= last`. It must hold exactly that many entries.
pub fn decode(first: u64, last: u64, payload: &[u8]) -> Result<Vec<RunEntry<'_>>, String> {
    let expected = last
        .checked_sub(first)
        .and_then(|n| n.checked_add(1))
        .filter(|_| first > 0)
        .ok_or_else(|| format!("bad sequence range {first}..={last}"))?;
    let mut r = Reader::new(payload);
    match r.u8()? {
        VERSION => {}
        v => return Err(format!("unknown run format version {v}")),
    }
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

    #[test]
    fn round_trips() {
        let out = encode(&sample());
        assert_eq!(decode(7, 8, &out).expect("decode"), sample());
        let one = encode(&sample()[..1]);
        assert_eq!(decode(7, 7, &one).expect("one"), sample()[..1]);
    }

    #[test]
    fn the_range_must_match_the_entries() {
        let out = encode(&sample());
        assert!(decode(7, 9, &out).is_err());
        assert!(decode(7, 7, &out).is_err());
        assert!(decode(8, 7, &out).is_err());
        assert!(decode(0, 1, &out).is_err());
        assert!(
            decode(1, u64::MAX, &out)
                .expect_err("huge")
                .contains("cannot hold")
        );
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let out = encode(&sample());
        for cut in 0..out.len() {
            assert!(decode(7, 8, &out[..cut]).is_err(), "cut at {cut} decoded");
        }
        assert!(
            decode(7, 8, &[2])
                .expect_err("version")
                .contains("version 2")
        );
        for i in 1..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0xff;
            let _ = decode(7, 8, &bad);
        }
        // A length that claims far more than the payload holds is refused, not allocated.
        let mut huge = begin(0);
        huge.extend_from_slice(&[0; 21]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(1, 1, &huge).expect_err("huge").contains("truncated"));
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
