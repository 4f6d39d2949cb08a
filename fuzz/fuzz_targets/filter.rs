//! No filter text makes compiling or evaluating a consumer's CEL filter panic past the filter
//! module, and a filter that compiles evaluates on a Sequin-shaped message without failing.
//!
//! The CEL parser panics on some truncated inputs; `Filter::compile` refuses those first and
//! catches the rest. libfuzzer-sys aborts on every panic, caught or not, so the target restores
//! the default hook: only a panic that escapes the filter module reaches libFuzzer and aborts.
#![no_main]

use std::collections::HashSet;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use tidepool::deliver::filter::Filter;

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(filter) = Filter::compile(text) else { return };
    let message = serde_json::json!({
        "record": {"id": 1, "status": "shipped", "total": "120.50", "tags": ["vip"], "note": null},
        "changes": {"status": "new"},
        "action": "update",
        "metadata": {"table_schema": "public", "table_name": "orders", "commit_lsn": 1234}
    });
    let numeric: HashSet<String> = ["total".to_string()].into();
    let _ = filter.matches(&message, &numeric);
});
