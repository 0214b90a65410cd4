//! The control API's name parsers (domain name, VM UUID, socket path) and the broker's
//! configuration file on arbitrary text: names come from URLs, JSON bodies and libvirt
//! XML. Invariants: no panic; a parsed value prints back to a text that parses to the
//! same value, and a domain name is a single safe path component.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenchan_api::{DomainName, SocketPath, VmUuid};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<DomainName>() {
        assert_eq!(name.to_string().parse::<DomainName>().as_ref(), Ok(&name));
        assert!(!name.as_str().contains('/') && !name.as_str().starts_with('.'));
    }
    if let Ok(uuid) = text.parse::<VmUuid>() {
        assert_eq!(uuid.as_str().len(), 36);
        assert_eq!(uuid.to_string().parse::<VmUuid>().as_ref(), Ok(&uuid));
    }
    if let Ok(path) = text.parse::<SocketPath>() {
        assert!(path.as_path().as_os_str().len() <= xenchan_api::names::MAX_SOCKET_PATH);
    }
    if let Ok(config) = xenchan_api::config::Config::parse(text, std::path::Path::new("f")) {
        let again =
            xenchan_api::config::Config::parse(&config.to_toml(), std::path::Path::new("f"))
                .expect("the effective configuration parses");
        assert_eq!(again, config);
    }
});
