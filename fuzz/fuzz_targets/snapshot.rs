//! Reading a snapshot file never panics, whatever its bytes: opening, looking a key up and reading
//! every row either work or return an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::store::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("tidepool-fuzz-snapshot-{}", std::process::id()));
    std::fs::write(&path, data).expect("writing the input");
    if let Ok(snapshot) = Snapshot::open(&path, None) {
        let _ = snapshot.get(b"\x01\x80\0\0\0\0\0\0\x01");
        for i in 0..snapshot.blocks() {
            let _ = snapshot.block(i);
        }
        let _ = snapshot.records_from(0).count();
    }
});
