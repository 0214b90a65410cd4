//! The libvirt hook's /etc/xenchan/hook.toml parser on arbitrary text.
//! Invariants: no panic; a refusal names a key (or `-` for the file as a whole); an
//! accepted file's settings written back as TOML parse to the same settings.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xenchan_api::hook_config::HookConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match HookConfig::parse(text, Path::new("hook.toml")) {
        Ok(c) => {
            let again = toml::to_string(&c).expect("settings serialise");
            assert_eq!(HookConfig::parse(&again, Path::new("hook.toml")), Ok(c));
        }
        Err(e) => assert!(!e.key.is_empty()),
    }
});
