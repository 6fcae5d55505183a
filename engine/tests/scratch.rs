use lattice_engine::*;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};
fn show(label: &str, q: &Document) {
    let txn = q.ydoc().transact();
    println!("{label}: sv {:?} pending {:?} json {}", txn.state_vector(), txn.store().pending_update().map(|p| (p.update.encode_v1(), p.missing.clone())), q.to_json()["texts"]);
}
#[test]
fn scratch() {
    let mut d = Document::new(ReplicaId::from_random(1));
    let ds = vec![
        d.text_insert("title", 0, "😀").unwrap(),
        d.text_insert("title", 0, "€").unwrap(),
        d.text_insert("title", 0, "a").unwrap(),
        d.text_insert("body", 0, "é").unwrap(),
    ];
    for (i, x) in ds.iter().enumerate() { println!("delta {i}: {:?}", x.yjs); }
    let mut q = Document::new(ReplicaId::from_random(99));
    q.apply(&ds[3]).unwrap(); show("after 3", &q);
    q.apply(&ds[2]).unwrap(); show("after 3,2", &q);
    q.apply(&ds[0]).unwrap(); show("after 3,2,0", &q);
    let mut q = Document::new(ReplicaId::from_random(99));
    q.apply(&ds[2]).unwrap(); q.apply(&ds[3]).unwrap(); q.apply(&ds[0]).unwrap(); show("after 2,3,0", &q);
    let mut q = Document::new(ReplicaId::from_random(99));
    q.apply(&ds[3]).unwrap(); q.apply(&ds[0]).unwrap(); show("after 3,0", &q);
}
