//! No connection string makes the parser panic: a URL or key=value text is refused with an error that
//! names the field, or parses into a spec that validates or is refused the same way, and "Autofill
//! with URL" on it agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::source::conninfo::Conninfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Conninfo::parse(text) {
        Ok(info) => {
            let spec = info.into_spec();
            if let Err(e) = spec.validate() {
                assert!(!e.message().is_empty());
            }
            assert!(tidepool::app::profile::autofill(text).is_ok());
        }
        Err(e) => {
            assert!(!e.message().is_empty());
            assert!(tidepool::app::profile::autofill(text).is_err());
        }
    }
});
