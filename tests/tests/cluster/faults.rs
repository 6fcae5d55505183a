//! Redis restarted, its connections killed, a stream trimmed, and PostgreSQL away, under
//! writes from every node: readers on every node see each entry once, in order.

use super::*;

/// What happens to Redis under continuous writes, in [`readers_see_every_entry_once`].
#[derive(Debug, Clone, Copy)]
enum RedisTrouble {
    /// Stopped (its streams lost) and started again on the same port.
    Restart,
    /// `CLIENT KILL TYPE normal`, twice.
    ClientKill,
    /// The document's stream trimmed to nothing, with every node running and with one node
    /// paused (SIGSTOP) so that entries it has not read yet are trimmed away.
    TrimmedStream,
}

/// Three writers (one per node) write without pause while `trouble` happens; an SSE and a
/// long-poll reader on every node must see every seq from their start to the final head
/// exactly once and in order, the writers converge, and the nodes read what they missed from
/// PostgreSQL (`lattice_cluster_catchup_reads_total`).
async fn readers_see_every_entry_once(trouble: RedisTrouble) {
    let mut cluster = Cluster::start().await;
    let d = doc("stream");
    let mut writers = writer_per_node(&cluster, &d, ["w0", "w1", "w2"], 300, 5).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        readers.push(SeqReader::sse(cluster.addr(i), "stream"));
        readers.push(SeqReader::long_poll(cluster.addr(i), "stream"));
    }
    for r in &readers {
        r.started().await;
    }
    let acked = |writers: &[Writer]| writers.iter().map(Writer::acked).collect::<Vec<_>>();
    let before = acked(&writers);
    for (w, from) in writers.iter().zip(&before) {
        assert!(w.progressed(*from, 50, WAIT).await);
    }
    let catchup_before = cluster
        .metric_sum("lattice_cluster_catchup_reads_total")
        .await;

    match trouble {
        RedisTrouble::Restart => redis_down_and_back(&mut cluster, &writers).await,
        RedisTrouble::ClientKill => {
            let errors_before = cluster
                .metric_sum("lattice_cluster_redis_errors_total")
                .await;
            let killed = cluster.redis.client_kill_normal().await;
            assert!(killed >= 3, "CLIENT KILL found {killed} node connections");
            let now = acked(&writers);
            for (w, from) in writers.iter().zip(&now) {
                assert!(w.progressed(*from, 10, WAIT).await);
            }
            cluster.redis.client_kill_normal().await;
            redis_up_everywhere(&cluster, true).await;
            let errors = cluster
                .metric_sum("lattice_cluster_redis_errors_total")
                .await;
            assert!(
                errors > errors_before,
                "no node counted its killed Redis connections ({errors_before} -> {errors})"
            );
        }
        RedisTrouble::TrimmedStream => {
            let trimmed = cluster.redis.xtrim("stream", 0).await;
            assert!(trimmed > 0, "the stream was empty before the trim");
            let now = acked(&writers);
            for (w, from) in writers.iter().zip(&now) {
                assert!(w.progressed(*from, 10, WAIT).await);
            }
            // Node 1 stops dead between commits of its own (its writer paused and fully
            // acknowledged, so it holds no row lock the others wait for), the others write on,
            // and what node 1 has not read is trimmed before it resumes.
            writers[1].pause(true);
            assert!(
                writers[1]
                    .client
                    .wait_until(WAIT, |s| s.pending(&d) == 0)
                    .await
            );
            let entries = "lattice_cluster_catchup_entries_total";
            let caught_up = cluster.metric_of(1, entries).await;
            cluster.pause(1);
            let now = acked(&writers);
            for i in [0, 2] {
                assert!(
                    writers[i].progressed(now[i], 20, WAIT).await,
                    "writer {} stalled while node 1 was paused",
                    writers[i].tag
                );
            }
            let trimmed = cluster.redis.xtrim("stream", 0).await;
            cluster.resume(1);
            writers[1].pause(false);
            assert!(trimmed > 0, "nothing was written while node 1 was paused");
            assert!(
                cluster
                    .wait_metric(1, entries, WAIT, |v| v > caught_up)
                    .await,
                "node 1 read nothing from the database after the entries it had not read were \
                 trimmed\n{}",
                cluster.logs()
            );
        }
    }

    // Writing goes on after the trouble on every node.
    let now = acked(&writers);
    for (w, from) in writers.iter().zip(&now) {
        assert!(
            w.progressed(*from, 50, LONG_WAIT).await,
            "writer {} gets no acks after the trouble; errors {:?}\n{}",
            w.tag,
            w.errors(),
            cluster.logs()
        );
    }
    settle_and_converge(&cluster, &mut writers, &d).await;

    let head = cluster
        .store()
        .await
        .document(&d)
        .await
        .expect("meta")
        .expect("written")
        .head_seq;
    for r in readers {
        let what = r.what.clone();
        let log = r.finish(head, WAIT).await;
        let start = log.start.expect("started");
        eprintln!(
            "{what} ({trouble:?}): from {start} to {head}, {} events, notes {:?}",
            log.seqs.len(),
            log.notes
        );
        let want: Vec<u64> = (start + 1..=head).collect();
        if log.seqs != want {
            let mut seen = BTreeSet::new();
            let repeated: Vec<u64> = log
                .seqs
                .iter()
                .copied()
                .filter(|s| !seen.insert(*s))
                .collect();
            let missing: Vec<u64> = want.iter().copied().filter(|s| !seen.contains(s)).collect();
            let out_of_order = log.seqs.windows(2).filter(|w| w[1] <= w[0]).count();
            panic!(
                "{what} ({trouble:?}): from {start} to {head} it saw {} events; missing {:?}, \
                 repeated {:?}, {out_of_order} out of order; notes {:?}\n{}",
                log.seqs.len(),
                &missing[..missing.len().min(30)],
                &repeated[..repeated.len().min(30)],
                log.notes,
                cluster.logs()
            );
        }
    }
    let catchup = cluster
        .metric_sum("lattice_cluster_catchup_reads_total")
        .await;
    eprintln!("catch-up reads over the nodes: {catchup_before} -> {catchup}");
    assert!(
        catchup > catchup_before,
        "no node read missed entries from the database ({catchup_before} -> {catchup})"
    );
    for w in &writers {
        w.client.stop();
    }
    cluster.shutdown().await;
}

/// Waits until every node's `lattice_cluster_redis_up` says `up`.
async fn redis_up_everywhere(cluster: &Cluster, up: bool) {
    let want = f64::from(u8::from(up));
    for i in 0..3 {
        assert!(
            cluster
                .wait_metric(i, "lattice_cluster_redis_up", WAIT, |v| v == want)
                .await,
            "node {i} does not report lattice_cluster_redis_up {want}\n{}",
            cluster.logs()
        );
    }
}

/// Redis stopped under writes: every node says so (`/readyz` 200 `degraded`,
/// `lattice_cluster_redis_up` 0), keeps acknowledging and delivers across nodes by polling the
/// database; started again, the nodes reconnect and the streams carry entries again.
async fn redis_down_and_back(cluster: &mut Cluster, writers: &[Writer]) {
    cluster.redis.stop().await;
    redis_up_everywhere(cluster, false).await;
    for i in 0..3 {
        let deadline = Instant::now() + WAIT;
        let mut ready = cluster.readyz(i).await;
        while !(ready.0 == 200 && ready.1.starts_with("degraded")) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ready = cluster.readyz(i).await;
        }
        assert!(
            ready.0 == 200 && ready.1.starts_with("degraded"),
            "node {i} /readyz with Redis down: {ready:?}"
        );
    }
    // Still acknowledged, and delivered across nodes: node 0's newest edit reaches the
    // clients of nodes 1 and 2.
    let d = writers[0].doc.clone();
    let made = writers[0].made();
    assert!(
        writers[0].progressed(made, 5, WAIT).await,
        "no acks while Redis is down; errors {:?}\n{}",
        writers[0].errors(),
        cluster.logs()
    );
    let probe = marker(&writers[0].tag, made);
    for w in &writers[1..] {
        assert!(
            w.client
                .wait_until(WAIT, |s| s
                    .document(&d)
                    .is_some_and(|x| x.text(TEXT).contains(&probe)))
                .await,
            "{probe} written on node 0 while Redis is down never reached writer {}\n{}",
            w.tag,
            cluster.logs()
        );
    }
    let streamed = cluster
        .metric_sum("lattice_cluster_stream_entries_total")
        .await;
    cluster.redis.start_again().await;
    redis_up_everywhere(cluster, true).await;
    for i in 0..3 {
        let (status, body) = cluster.readyz(i).await;
        assert!(
            status == 200 && !body.starts_with("degraded"),
            "node {i} /readyz with Redis back: {status} {body}"
        );
    }
    let deadline = Instant::now() + WAIT;
    let mut now = streamed;
    while now <= streamed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = cluster
            .metric_sum("lattice_cluster_stream_entries_total")
            .await;
    }
    assert!(
        now > streamed,
        "no entry came through Redis after its restart\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_a_redis_restart() {
    readers_see_every_entry_once(RedisTrouble::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_killed_redis_connections() {
    readers_see_every_entry_once(RedisTrouble::ClientKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_on_every_node_see_each_entry_once_across_a_trimmed_stream() {
    readers_see_every_entry_once(RedisTrouble::TrimmedStream).await;
}

/// PostgreSQL away under writes on every node (the nodes reach it through a proxy the test
/// cuts): nothing written meanwhile is acknowledged, nothing acknowledged is lost, and once it
/// is back the same node processes acknowledge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_under_a_cluster_acknowledges_nothing_and_loses_nothing() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        database_proxy: true,
        ..ClusterOptions::default()
    })
    .await;
    let d = doc("outage");
    let mut writers = writer_per_node(&cluster, &d, ["p0", "p1", "p2"], 400, 10).await;

    cluster.database.as_ref().expect("proxy").down();
    let made_at_cut: Vec<u64> = writers.iter().map(Writer::made).collect();
    for i in 0..3 {
        let deadline = Instant::now() + WAIT;
        let mut ready = cluster.readyz(i).await;
        while ready.0 != 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ready = cluster.readyz(i).await;
        }
        assert_eq!(
            ready.0, 503,
            "node {i} /readyz with the database down: {ready:?}"
        );
    }
    // Eight seconds down: the writers go on editing, and no edit made after the cut is
    // acknowledged.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        for (w, cut) in writers.iter().zip(&made_at_cut) {
            let acked = w.acked();
            assert!(
                acked <= *cut,
                "writer {}: {acked} edits acknowledged, but only {cut} were made before the \
                 database went away\n{}",
                w.tag,
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (w, cut) in writers.iter().zip(&made_at_cut) {
        assert!(
            w.made() > *cut,
            "writer {} made no edit during the outage",
            w.tag
        );
    }

    cluster.database.as_ref().expect("proxy").up().await;
    for w in &writers {
        assert!(
            w.client
                .wait_until(LONG_WAIT, |s| s.is_synced(&d) && s.pending(&d) == 0)
                .await,
            "writer {} keeps {} edits unacknowledged after the outage; errors {:?}\n{}",
            w.tag,
            w.client.pending(&d),
            w.errors(),
            cluster.logs()
        );
    }
    let now: Vec<u64> = writers.iter().map(Writer::acked).collect();
    for (w, from) in writers.iter().zip(&now) {
        assert!(
            w.progressed(*from, 10, WAIT).await,
            "writer {} gets no acks after the outage",
            w.tag
        );
    }
    for i in 0..3 {
        assert!(
            cluster.node_mut(i).is_running(),
            "node {i} exited during the outage\n{}",
            cluster.logs()
        );
    }
    let markers = settle_and_converge(&cluster, &mut writers, &d).await;
    let stored = cluster
        .store()
        .await
        .load(&d, ReplicaId::new(0x5707).expect("replica"))
        .await
        .expect("load")
        .expect("written")
        .document
        .text(TEXT);
    let wrong = not_exactly_once(&stored, &markers);
    assert!(
        wrong.is_empty(),
        "acknowledged edits not exactly once in the database: {:?}",
        &wrong[..wrong.len().min(20)]
    );
    for w in &writers {
        w.client.stop();
    }
    cluster.shutdown().await;
}
