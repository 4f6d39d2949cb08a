//! pgoutput decoding never panics, and whatever decodes re-encodes to bytes that decode to the same
//! message (boolean flag bytes may be any non-zero value on input but are written as 0 or 1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::source::pgoutput::{decode, encode, Context};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the context; the rest is the message.
    let Some((&flags, message)) = data.split_first() else { return };
    let context = Context { in_stream: flags & 1 != 0, parallel_abort_info: flags & 2 != 0 };
    if let Ok(decoded) = decode(message, context) {
        let again = decode(&encode(&decoded, context), context).expect("an encoded message decodes");
        assert_eq!(again, decoded, "decode → encode → decode changed the message");
    }
});
