//! zstd compression of stored blobs: log runs (SQLite's `update_runs`, run format 2, see
//! [`super::runs`]) and checkpoints (both backends, `checkpoints.encoding`).
//!
//! Consecutive keystroke updates of a document have almost everything in common (the same
//! client id, clocks counting up, the same map keys in every delta), so a run of a thousand of
//! them shrinks about sevenfold; a snapshot about twofold. Decompression is bounded by a size
//! the caller knows before it allocates (a run's recorded raw length, a checkpoint's
//! `byte_size`) and must produce exactly that many bytes, so a damaged blob is an error, never
//! a panic or an allocation of whatever a stored header claims.

use std::borrow::Cow;

/// zstd's default level: about 7× on keystroke runs at a few hundred MB/s. Never inside an
/// append's transaction (drains run between group commits, the checkpointer in the
/// background); higher levels gain a few percent for several times the CPU.
const LEVEL: i32 = 3;

/// How a checkpoint's `snapshot` column is stored (`checkpoints.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckpointEncoding {
    /// `Document::snapshot()` as it is (every checkpoint written before schema 4).
    Raw = 0,
    /// One zstd frame holding the snapshot.
    Zstd = 1,
}

/// A snapshot as it goes into a `checkpoints` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedCheckpoint {
    pub encoding: CheckpointEncoding,
    /// What the `snapshot` column holds.
    pub stored: Vec<u8>,
    /// The snapshot's own length (`byte_size`).
    pub raw_len: u64,
}

/// A compressor for many blobs in a row (one drain's runs): its context is made once.
pub struct Packer {
    inner: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer").finish_non_exhaustive()
    }
}

impl Default for Packer {
    fn default() -> Self {
        Self::new()
    }
}

impl Packer {
    pub fn new() -> Self {
        // Only fails when zstd cannot allocate its context; blobs are then stored as they are.
        Self {
            inner: zstd::bulk::Compressor::new(LEVEL).ok(),
        }
    }

    /// `raw` compressed, or `None` if that does not make it smaller (or zstd failed; the
    /// caller stores the blob uncompressed, which every reader still reads).
    pub(crate) fn compress(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let out = self.inner.as_mut()?.compress(raw).ok()?;
        (out.len() < raw.len()).then_some(out)
    }
}

/// Decompresses one zstd frame that must hold exactly `raw_len` bytes.
pub(crate) fn decompress(frame: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    // The frame's header says how much it holds (our compressor always records it): checked
    // before anything is allocated for it.
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n == raw_len as u64 => {}
        Ok(Some(n)) => {
            return Err(format!(
                "the zstd frame holds {n} bytes, {raw_len} were recorded"
            ));
        }
        Ok(None) => return Err("the zstd frame does not record its size".to_owned()),
        Err(_) => return Err("not a zstd frame".to_owned()),
    }
    let out = zstd::bulk::decompress(frame, raw_len).map_err(|e| format!("zstd: {e}"))?;
    if out.len() != raw_len {
        return Err(format!(
            "the zstd frame decompressed to {} bytes, {raw_len} were recorded",
            out.len()
        ));
    }
    Ok(out)
}

/// A snapshot packed for storage: compressed when that makes it smaller.
pub(crate) fn pack_checkpoint(snapshot: Vec<u8>) -> PackedCheckpoint {
    let raw_len = snapshot.len() as u64;
    match Packer::new().compress(&snapshot) {
        Some(stored) => PackedCheckpoint {
            encoding: CheckpointEncoding::Zstd,
            stored,
            raw_len,
        },
        None => PackedCheckpoint {
            encoding: CheckpointEncoding::Raw,
            stored: snapshot,
            raw_len,
        },
    }
}

/// The snapshot a `checkpoints` row holds, given its `encoding` and `byte_size` columns.
pub(crate) fn unpack_checkpoint(
    encoding: i64,
    stored: &[u8],
    byte_size: u64,
) -> Result<Cow<'_, [u8]>, String> {
    match encoding {
        e if e == CheckpointEncoding::Raw as i64 => Ok(Cow::Borrowed(stored)),
        e if e == CheckpointEncoding::Zstd as i64 => {
            let raw_len = usize::try_from(byte_size)
                .map_err(|_| format!("byte_size {byte_size} is too large"))?;
            decompress(stored, raw_len).map(Cow::Owned)
        }
        other => Err(format!("unknown checkpoint encoding {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_damage_is_an_error() {
        let snapshot: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let packed = pack_checkpoint(snapshot.clone());
        assert_eq!(packed.encoding, CheckpointEncoding::Zstd);
        assert!(packed.stored.len() < snapshot.len() / 4);
        let code = packed.encoding as i64;
        assert_eq!(
            unpack_checkpoint(code, &packed.stored, packed.raw_len).expect("unpack"),
            snapshot.as_slice()
        );
        // A wrong recorded size, a cut frame, garbage and an unknown encoding are refused.
        assert!(unpack_checkpoint(code, &packed.stored, packed.raw_len + 1).is_err());
        assert!(unpack_checkpoint(code, &packed.stored, u64::MAX).is_err());
        let cut = &packed.stored[..packed.stored.len() - 3];
        assert!(unpack_checkpoint(code, cut, packed.raw_len).is_err());
        assert!(unpack_checkpoint(code, b"\x81\xa1a\x01", 4).is_err());
        assert!(unpack_checkpoint(7, &packed.stored, packed.raw_len).is_err());
        // Raw rows (older ones) read as they are.
        assert_eq!(unpack_checkpoint(0, b"abc", 3).expect("raw"), &b"abc"[..]);
    }

    #[test]
    fn what_does_not_shrink_stays_raw() {
        let packed = pack_checkpoint(b"\x81".to_vec());
        assert_eq!(packed.encoding, CheckpointEncoding::Raw);
        assert_eq!(packed.stored, b"\x81");
    }
}
