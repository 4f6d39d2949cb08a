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

/// Waits for a child and returns its exit status, its own peak resident set size in KiB, and the CPU
/// it used (user + system seconds): CPU per unit of work repeats better than wall time on a shared
/// machine.
pub fn wait_with_rusage(pid: i32) -> (i32, i64, f64) {
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        libc::WEXITSTATUS(status),
        usage.ru_maxrss,
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
    )
}
