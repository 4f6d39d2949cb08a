//! What the server sends on a replication connection never makes Tidepool panic: framing, error
//! responses, data rows and the stream's CopyData (XLogData, keepalives, the Begin/Commit/Message
//! boundaries) either parse or are a protocol error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use bytes::BytesMut;
use tidepool::source::replication::copy_data;
use tidepool::source::wire::{data_row, split_frame, Framed, ServerError};

fuzz_target!(|data: &[u8]| {
    let mut input = BytesMut::from(data);
    loop {
        let before = input.len();
        match split_frame(&mut input) {
            Ok(Framed::Frame(frame)) => {
                assert_eq!(before - input.len(), 5 + frame.body.len(), "a frame is its header and body");
                match frame.tag {
                    b'E' | b'N' => drop(ServerError::parse(&frame.body)),
                    b'D' => drop(data_row(&frame.body)),
                    b'd' => drop(copy_data(frame.body)),
                    _ => {}
                }
            }
            Ok(Framed::Need(whole)) => {
                assert!(whole > input.len(), "a partial message needs more than is there");
                assert_eq!(input.len(), before, "nothing is taken from a partial message");
                break;
            }
            Err(_) => break,
        }
    }
});
