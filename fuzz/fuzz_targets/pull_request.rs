//! No query string or body makes the pull API's request parsers panic: `receive`'s parameters are
//! refused with a summary or come out within Sequin's bounds, and an ack or nack body gives ack ids
//! or a summary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::deliver::pull::parse_request;

fuzz_target!(|data: &[u8]| {
    // The first line is the query string, the rest the body (either may be anything).
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (query, body) = data.split_at(split);
    let query = std::str::from_utf8(query).ok();
    let body = body.get(1..).unwrap_or_default();
    let parsed = parse_request(query, body);
    match parsed.receive {
        Ok((batch_size, wait_for)) => {
            assert!((1..=1000).contains(&batch_size), "batch_size {batch_size}");
            if let Some(wait) = wait_for {
                assert!(wait.as_millis() <= 300_000, "wait_for {wait:?}");
            }
        }
        Err(summary) => assert!(!summary.is_empty()),
    }
    if let Err(summary) = parsed.ack_ids {
        assert!(!summary.is_empty());
    }
});
