//! A room that loads on one node while another node's clients are writing: the first
//! subscriber there must get every entry, those committed while the room loaded included.

use super::*;

/// Rounds of "load a room while another node writes"; each is about half a second.
const ROUNDS: u32 = 12;

/// Each round: a fresh document written on node 0 (and on node 2), and a first subscriber on
/// node 1 that opens it at a random moment, so that node 1 loads its room while entries are
/// being committed and published. The subscriber, and a later one, converge with the writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_loaded_while_other_nodes_write_misses_no_entry() {
    let cluster = Cluster::start().await;
    for round in 0..ROUNDS {
        let d = doc(&format!("join-{round}"));
        let replica = 1_000 + round * 8;
        let pace = Duration::from_millis(2);
        let mut writers = vec![
            Writer::start(&cluster.ws_url(0), replica, "w0", &d, pace).await,
            Writer::start(&cluster.ws_url(2), replica + 1, "w2", &d, pace).await,
        ];
        tokio::time::sleep(Duration::from_millis(u64::from(round % 6) * 4)).await;
        // Node 1's first subscriber for the document: node 1 loads the room now.
        writers.push(Writer::start(&cluster.ws_url(1), replica + 2, "r1", &d, pace).await);
        for w in &writers {
            let from = w.acked();
            assert!(
                w.progressed(from, 20, WAIT).await,
                "round {round}: writer {} gets no acks",
                w.tag
            );
        }
        settle_and_converge(&cluster, &mut writers, &d).await;
        for w in &writers {
            w.client.stop();
        }
    }
    cluster.shutdown().await;
}
