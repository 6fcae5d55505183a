//! Hand-built Yjs v1 updates that a hostile or broken peer could send, shared by the hardening
//! tests and the chaos suite's attacks. Each is written byte by byte, since a well-behaved `yrs`
//! document would never produce them.

use lattice_engine::Delta;

/// lib0's unsigned varint of `v`.
pub fn var(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// One update from `client`: `levels` arrays, each inside the one before, under root "a".
pub fn nested_arrays(client: u32, levels: u64) -> Vec<u8> {
    let mut u = vec![1];
    u.extend(var(levels));
    u.extend(var(u64::from(client)));
    u.push(0);
    // Level 0: a type item (info 7) whose parent is the root type "a"; type ref 0 = array.
    u.extend([7, 1, 1, b'a', 0]);
    for level in 1..levels {
        // A type item whose parent is the item one clock before it.
        u.extend([7, 0]);
        u.extend(var(u64::from(client)));
        u.extend(var(level - 1));
        u.push(0);
    }
    u.push(0);
    u
}

/// A text insert ("z" into root "t") by `client` at clock 5, whose clocks 0..5 never came: an
/// update with missing history.
pub fn text_after_gap(client: u32) -> Vec<u8> {
    let mut gap = vec![1, 1];
    gap.extend(var(u64::from(client)));
    gap.extend([5, 4, 1, 1, b't', 1, b'z', 0]);
    gap
}

/// A garbage-collected range of `len` clocks of `client` starting at `clock`: a claim on clocks
/// under someone's id without any content.
pub fn gc_range(client: u32, clock: u64, len: u64) -> Vec<u8> {
    let mut gc = vec![1, 1];
    gc.extend(var(u64::from(client)));
    gc.extend(var(clock));
    gc.push(0);
    gc.extend(var(len));
    gc.push(0);
    gc
}

/// A delta carrying only Yjs bytes.
pub fn yjs_delta(bytes: Vec<u8>) -> Delta {
    Delta {
        yjs: bytes,
        ..Delta::default()
    }
}
