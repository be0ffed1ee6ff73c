//! Configuration text: any input gives a config or errors with lines inside the file, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = streamgate_config::parse(std::path::Path::new("fuzz.toml"), text) {
        let lines = text.lines().count().max(1);
        for e in &errors.0 {
            assert!(e.line <= lines + 1, "{e}");
        }
    }
});
