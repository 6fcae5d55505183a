//! What the server's fuzz targets check: one function per target, each taking the raw input.
//!
//! `fuzz_targets/<name>.rs` calls [`<name>`](self) under libFuzzer, and
//! `server/tests/fuzz_regressions.rs` includes this file and calls the same function on every
//! input kept in `regressions/<name>/`, so a crash found once stays fixed in the normal test run
//! (stable toolchain, no libFuzzer). A property that does not hold panics.
//!
//! [`seeds`] builds the committed corpus; the regression test checks that `corpus/` holds it.

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use lattice_engine::DocId;
use lattice_server::auth::{DocPattern, KeySet, Principal, Scope};
use lattice_server::store::fuzzing::{journal, runs};

/// `fuzz_targets/store_formats.rs`: the SQLite `journal` and `update_runs` blob decoders never
/// panic, and what they accept encodes back to exactly the same bytes. The first byte picks the
/// format (even: journal; odd: run); a run's input then starts with its `first_seq` and
/// `last_seq` (big-endian `u64`s). The target also measures the heap: see [`allocation_bound`].
pub fn store_formats(bytes: &[u8]) {
    let Some((&selector, rest)) = bytes.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        journal_row(rest);
    } else {
        run_row(rest);
    }
}

fn journal_row(payload: &[u8]) {
    let Ok(entries) = journal::decode(payload) else {
        return;
    };
    let mut again = journal::begin(payload.len());
    for entry in &entries {
        journal::push(&mut again, entry);
    }
    assert!(
        again == payload,
        "a journal row changed through decode/encode"
    );
}

fn run_row(input: &[u8]) {
    let (Some(first), Some(last)) = (be_u64(input, 0), be_u64(input, 8)) else {
        return;
    };
    let payload = &input[16..];
    let Ok(stored) = runs::entries_of(payload) else {
        return;
    };
    let Ok(entries) = runs::decode(first, last, &stored) else {
        return;
    };
    let mut seq = first;
    for entry in &entries {
        assert_eq!(
            entry.seq, seq,
            "run entries are numbered from first_seq, densely"
        );
        seq = seq.saturating_add(1);
    }
    assert_eq!(
        entries.last().map(|e| e.seq),
        Some(last),
        "a run holds exactly first_seq..=last_seq"
    );
    let mut again = runs::begin(stored.len());
    for entry in &entries {
        runs::push(&mut again, entry);
    }
    if payload.first() == Some(&1) {
        assert!(again == payload, "a run changed through decode/encode");
        return;
    }
    // A compressed run (format 2): its entries encode back to exactly what it decompressed
    // to, and sealed again they read back the same (zstd need not make the same frame twice).
    assert!(
        again[1..] == *stored,
        "a compressed run's entries changed through decode/encode"
    );
    let sealed = runs::seal(&mut runs::Packer::new(), again);
    let unsealed = runs::entries_of(&sealed).expect("a sealed run reads back");
    assert!(
        runs::decode(first, last, &unsealed).ok() == Some(entries),
        "a run changed through seal"
    );
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

/// Most heap bytes one [`store_formats`] call may hold at once for `input`: the entries it
/// decodes (a few machine words per entry, and every entry takes at least 25 stored bytes)
/// plus the re-encoded copy, counted on the input's length plus, for a compressed run (format
/// 2), the length its header declares (which the decoder caps at `RUN_MAX_PACKED_BYTES`
/// before it allocates anything). A decoder that trusted a stored count or length would blow
/// far past it.
pub fn allocation_bound(input: &[u8]) -> usize {
    // The selector, `first_seq` and `last_seq`, then the run: its format byte, then (format 2)
    // the declared length.
    let declared = match (input.first(), input.get(17), input.get(18..22)) {
        (Some(selector), Some(2), Some(raw)) if selector % 2 == 1 => {
            let raw: [u8; 4] = raw.try_into().unwrap_or_default();
            (u32::from_be_bytes(raw) as usize).min(runs::RUN_MAX_PACKED_BYTES)
        }
        _ => 0,
    };
    16 * (input.len() + declared) + 4096
}

/// Key id and secret of the one key the `token` target's server holds.
pub const KID: &str = "fuzz";
pub const SECRET: &str = "lattice-fuzz-secret-0123456789abcdef";

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        KeySet::new(vec![(KID.to_owned(), SECRET.as_bytes().to_vec())]).expect("valid key")
    })
}

/// `fuzz_targets/token.rs`: token handling never panics. The input is tried three ways:
/// - as a whole token, through `KeySet::verify` (header, algorithm, key id, signature);
/// - as the claims (JWT payload) of a token signed with the server's own key, so the claims
///   check and the resulting [`Principal`] are reached too; the principal is then used as the
///   server uses one (subject, scope, expiry timer, document coverage);
/// - as a document pattern, through `DocPattern::parse`, which must round-trip through
///   `Display`.
pub fn token(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(principal) = keys().verify(&text) {
        use_principal(&principal);
    }
    match keys().verify(&sign(bytes)) {
        Ok(principal) => use_principal(&principal),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(pattern) = DocPattern::parse(&text) {
        let shown = pattern.to_string();
        assert_eq!(
            DocPattern::parse(&shown).as_ref(),
            Ok(&pattern),
            "a pattern changed through Display"
        );
        if let Ok(doc) = DocId::new(&*text) {
            assert!(
                pattern.covers(&doc),
                "an exact pattern must cover its own id"
            );
        }
    }
}

/// What the server reads off a principal: the author, the scope, the expiry timer of a live
/// connection, and coverage of documents inside and outside its patterns.
fn use_principal(principal: &Principal) {
    let _ = (principal.subject(), principal.scope());
    let _ = principal.expires_at();
    let _ = principal.time_left();
    for pattern in principal.patterns() {
        let inside = match pattern {
            DocPattern::All => DocId::new("any/doc"),
            DocPattern::Prefix(prefix) => DocId::new(format!("{prefix}doc")),
            DocPattern::Exact(id) => Ok(id.clone()),
        };
        if let Ok(doc) = inside {
            assert!(
                principal.access(&doc).is_some(),
                "{doc} is inside {pattern}"
            );
            assert!(principal.require(&doc, Scope::Read).is_ok());
            let _ = principal.require(&doc, Scope::Admin);
        }
    }
    if let Ok(doc) = DocId::new("outside/of/every/pattern") {
        let _ = principal.access(&doc);
    }
}

/// A compact JWS of `claims` (any bytes) under the server's key, with a well-formed header.
pub fn sign(claims: &[u8]) -> String {
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{KID}"}}"#);
    let message = format!("{}.{}", base64url(header.as_bytes()), base64url(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC signs any message");
    format!("{message}.{signature}")
}

/// Base64url without padding (RFC 7515's encoding of JWS parts).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// What a target checks, given one input.
pub type Check = fn(&[u8]);

/// Every fuzz target, by name, for the replay of kept inputs.
pub const TARGETS: &[(&str, Check)] = &[("store_formats", store_formats), ("token", token)];

/// The committed corpus: `(target, file name, bytes)`. The regression test writes it with
/// `LATTICE_BLESS=1` and otherwise checks that `corpus/` holds exactly these bytes.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let delta = b"\x81\xa3yjs\xc4\x02\x00\x00".as_slice();
    let mut journal_row = journal::begin(0);
    for (doc, seq, author) in [("notes/a", 1, None), ("b", 7, Some("alice"))] {
        journal::push(
            &mut journal_row,
            &journal::JournalEntry {
                doc,
                seq,
                hlc: 0x6553_f100_0000_0000,
                replica: 7,
                author,
                delta,
            },
        );
    }
    let mut run = vec![1];
    run.extend_from_slice(&41u64.to_be_bytes());
    run.extend_from_slice(&42u64.to_be_bytes());
    let mut row = runs::begin(0);
    for (seq, author) in [(41, Some("bob")), (42, None)] {
        runs::push(
            &mut row,
            &runs::RunEntry {
                seq,
                hlc: 0x6553_f100_0000_0001,
                replica: 9,
                committed_at_ms: 1_700_000_000_000,
                author,
                delta,
            },
        );
    }
    run.extend_from_slice(&row);
    // A run long enough to be sealed compressed (format 2).
    let mut packed = vec![1];
    packed.extend_from_slice(&100u64.to_be_bytes());
    packed.extend_from_slice(&163u64.to_be_bytes());
    let mut plain = runs::begin(0);
    for seq in 100..164 {
        runs::push(
            &mut plain,
            &runs::RunEntry {
                seq,
                hlc: 0x6553_f100_0000_0000 + seq,
                replica: 9,
                committed_at_ms: 1_700_000_000_000,
                author: None,
                delta,
            },
        );
    }
    packed.extend_from_slice(&runs::seal(&mut runs::Packer::new(), plain));

    let claims = |json: &str| json.as_bytes().to_vec();
    // 2100-01-01: far enough ahead that these seeds stay valid tokens.
    let valid = r#"{"sub":"alice","docs":["team-a/*","notes"],"scope":"write","exp":4102444800,"iat":1700000000}"#;
    vec![
        (
            "store_formats",
            "journal-two-entries",
            [&[0][..], &journal_row].concat(),
        ),
        ("store_formats", "journal-empty", vec![0, 1]),
        ("store_formats", "run-two-entries", run),
        ("store_formats", "run-compressed", packed),
        ("token", "claims-write", claims(valid)),
        (
            "token",
            "claims-admin-all",
            claims(r#"{"sub":"root","docs":["*"],"scope":"admin","exp":4102444800}"#),
        ),
        (
            "token",
            "claims-read-nbf",
            claims(r#"{"sub":"r","docs":["a/b/c"],"scope":"read","exp":4102444800,"nbf":1}"#),
        ),
        ("token", "token-signed", sign(valid.as_bytes()).into_bytes()),
        ("token", "pattern-prefix", b"team-a/*".to_vec()),
    ]
}
