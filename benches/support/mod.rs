//! What the benchmarks share: a cluster set up for bulk writes, and the peak memory of a child.

use tidepool::app::cluster::{Cluster, ClusterOptions};

/// A throwaway cluster whose checkpoints stay out of the measurements, with an empty `bench` database.
pub fn cluster() -> Cluster {
    let cluster = Cluster::start(ClusterOptions {
        settings: vec![
            ("max_wal_size".into(), "'4GB'".into()),
            ("checkpoint_timeout".into(), "'30min'".into()),
        ],
        ..Default::default()
    })
    .expect("starting PostgreSQL");
    cluster.psql("postgres", "CREATE DATABASE bench;").unwrap();
    cluster
}

/// Waits for a child and returns its exit status and its own peak resident set size in KiB.
pub fn wait_with_rusage(pid: i32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}
