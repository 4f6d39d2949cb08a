//! The UI imports every type that crosses the shell from `ui/src/lib/generated.ts`. This test fails
//! when that committed file is not what the Rust types render (the engine's and the shell's own), so
//! a changed field reaches the UI's type check instead of a screen at run time. With
//! `TIDEPOOL_WRITE_TYPES=1` it rewrites the file instead.

#[test]
fn generated_file_matches_the_rust_types() {
    if let Err(message) = tidepool_desktop::typescript().check_file(true) {
        panic!("{message}");
    }
}
