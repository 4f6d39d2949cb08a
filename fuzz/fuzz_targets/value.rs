//! No value text makes a type's JSON mapping panic, and the direct writer agrees with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::document::value::builtin;

const OIDS: [u32; 18] = [16, 20, 700, 701, 1700, 25, 114, 3802, 17, 2950, 1082, 1083, 1266, 1114, 1184, 1186, 1007, 1009];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let kind = builtin(OIDS[pick as usize % OIDS.len()]).expect("built-in");
    let mapped = kind.to_json(text);
    let mut written = String::new();
    let direct = kind.write_json(text, &mut written);
    if let (Ok(mapped), Ok(())) = (&mapped, &direct) {
        // json/jsonb are embedded as PostgreSQL printed them; for the others the two must agree.
        if !matches!(kind, tidepool::document::value::Kind::Json) {
            let reparsed: serde_json::Value = serde_json::from_str(&written).expect("the writer wrote JSON");
            // 0 and 0.0 are one JSON number: compare numbers by value, everything else exactly.
            match (reparsed.as_f64(), mapped.as_f64()) {
                (Some(a), Some(b)) => assert_eq!(a, b),
                _ => assert_eq!(&reparsed, mapped),
            }
        }
    }
});
