//! The client session and refusals: a refused delta is never covered by a later ack.

use lattice_engine::protocol::{ClientMsg, ErrorCode, ServerMsg};
use lattice_engine::sync::Session;
use lattice_engine::{ClockedHlc, DEFAULT_MAX_DRIFT, DocId, DocState, ReplicaId, manual_clock};

fn seqs(out: &lattice_engine::sync::SessionOutput) -> Vec<u64> {
    out.send
        .iter()
        .filter_map(|m| match m {
            ClientMsg::Delta { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refused_delta_stays_pending_through_later_acks_and_goes_out_with_the_next_resync() {
    let replica = ReplicaId::new(4).expect("replica");
    let mut s = Session::new(
        replica,
        ClockedHlc::new(replica, manual_clock, DEFAULT_MAX_DRIFT),
    );
    let doc = DocId::new("d").expect("doc");
    s.open(doc.clone(), Vec::new()).expect("open");
    s.connected();
    s.handle(ServerMsg::Sync {
        doc: doc.clone(),
        delta: Default::default(),
        state: DocState::default(),
    });
    let first = s
        .edit(&doc, |d, _| d.text_insert("t", 0, "a"))
        .expect("edit");
    let second = s
        .edit(&doc, |d, _| d.text_insert("t", 1, "b"))
        .expect("edit");
    let (refused, kept) = (seqs(&first)[0], seqs(&second)[0]);
    s.handle(ServerMsg::Error {
        code: ErrorCode::InvalidDelta,
        message: "refused".into(),
        doc: Some(doc.clone()),
        seq: Some(refused),
    });
    s.handle(ServerMsg::Ack {
        doc: doc.clone(),
        seq: kept,
    });
    assert_eq!(s.pending(&doc), 1, "the refused delta is still pending");

    // A server-initiated resync (what follows `missing_dependencies`) sends it again.
    let out = s.handle(ServerMsg::Sync {
        doc: doc.clone(),
        delta: Default::default(),
        state: DocState::default(),
    });
    let resent = seqs(&out);
    assert_eq!(resent.len(), 1);
    s.handle(ServerMsg::Ack {
        doc: doc.clone(),
        seq: resent[0],
    });
    assert_eq!(s.pending(&doc), 0);
}
