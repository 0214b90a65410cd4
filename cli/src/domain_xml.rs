//! What the libvirt hook needs from a libvirt domain XML: the domain's name, its UUID and
//! its unix channels (`<channel type='unix'>` with a `<target type='xen'|'virtio'>`).
//!
//! The XML comes from libvirtd, but it describes a domain an operator (or anyone allowed to
//! define domains) wrote: the parser is strict about structure and safe with hostile
//! text. A document type declaration (and so any entity definition) is refused outright,
//! nothing is fetched, the node count is bounded, and the caller bounds the input size.

use std::fmt;

use thiserror::Error;

/// Largest domain XML accepted (libvirt's own limit for a domain definition is 10 MiB;
/// real ones are a few KiB, and a hook reading more before its deadline is wrong).
pub const MAX_XML: usize = 4 * 1024 * 1024;

/// Most XML nodes (elements, attributes' parents, text) parsed.
const MAX_NODES: u32 = 200_000;

/// The transport a channel's target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelType {
    /// `<target type='xen'>`: a Xen PV console channel (libxl).
    Xen,
    /// `<target type='virtio'>`: a virtio-serial port (QEMU/KVM).
    Virtio,
}

impl ChannelType {
    /// The name used in the broker's API (`xen`, `virtio`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Xen => "xen",
            ChannelType::Virtio => "virtio",
        }
    }
}

impl fmt::Display for ChannelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `<channel type='unix'>` of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixChannel {
    /// `<target name=...>`: the channel name the guest sees.
    pub name: String,
    /// `<source path=...>`, if given (libvirt makes one up for virtio channels without).
    pub path: Option<String>,
    /// `<source mode=...>`: `bind` (QEMU listens; the broker connects) or `connect`.
    pub mode: Option<String>,
    /// Xen PV or virtio-serial.
    pub kind: ChannelType,
}

/// The parts of a domain definition the hook uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainXml {
    /// `<name>`.
    pub name: Option<String>,
    /// `<uuid>`, in canonical lowercase 8-4-4-4-12 form.
    pub uuid: Option<String>,
    /// Every unix channel with a xen or virtio target, in document order.
    pub channels: Vec<UnixChannel>,
}

impl DomainXml {
    /// The channels named `name`.
    pub fn channels_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a UnixChannel> {
        self.channels.iter().filter(move |c| c.name == name)
    }
}

/// Why a domain XML could not be used.
#[derive(Debug, Error)]
pub enum XmlError {
    /// Larger than [`MAX_XML`].
    #[error("the domain XML is larger than {MAX_XML} bytes")]
    TooLarge,
    /// Empty input.
    #[error("no domain XML on standard input")]
    Empty,
    /// Not UTF-8.
    #[error("the domain XML is not UTF-8 text")]
    NotUtf8,
    /// Not well-formed, or it has a DTD, or too many nodes.
    #[error("the domain XML is malformed")]
    Syntax(#[source] roxmltree::Error),
    /// No `<domain>` element.
    #[error("the XML has no <domain> element (root element is <{0}>)")]
    NotADomain(String),
    /// A value that cannot be right.
    #[error("the domain XML has an invalid {what}: {value:?}")]
    Invalid {
        /// Which element or attribute.
        what: &'static str,
        /// Its value (escaped when shown).
        value: String,
    },
}

/// Parses a libvirt domain XML (`<domain>`, or a `<domstatus>` wrapping one).
pub fn parse(bytes: &[u8]) -> Result<DomainXml, XmlError> {
    if bytes.len() > MAX_XML {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        // No external entity is ever fetched (and with no DTD there is none to fetch).
        entity_resolver: None,
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(XmlError::Syntax)?;
    let root = doc.root_element();
    let domain = if root.has_tag_name("domain") {
        root
    } else {
        // libvirtd's status XML wraps the definition; hooks get the definition, but
        // accept the wrapper rather than miss a channel.
        root.children()
            .find(|n| n.has_tag_name("domain"))
            .ok_or_else(|| XmlError::NotADomain(root.tag_name().name().to_string()))?
    };
    let child_text = |tag: &str| {
        domain
            .children()
            .find(|n| n.has_tag_name(tag))
            .map(|n| n.text().unwrap_or("").trim().to_string())
    };
    let name = child_text("name");
    if let Some(n) = &name
        && (n.is_empty() || n.chars().any(char::is_control))
    {
        return Err(XmlError::Invalid {
            what: "<name>",
            value: n.clone(),
        });
    }
    let uuid = child_text("uuid")
        .map(|u| {
            canonical_uuid(&u).ok_or(XmlError::Invalid {
                what: "<uuid>",
                value: u,
            })
        })
        .transpose()?;
    let mut channels = Vec::new();
    for devices in domain.children().filter(|n| n.has_tag_name("devices")) {
        for ch in devices.children().filter(|n| n.has_tag_name("channel")) {
            if ch.attribute("type") != Some("unix") {
                continue;
            }
            let Some(target) = ch.children().find(|n| n.has_tag_name("target")) else {
                continue;
            };
            let kind = match target.attribute("type") {
                Some("xen") => ChannelType::Xen,
                Some("virtio") => ChannelType::Virtio,
                _ => continue,
            };
            let Some(cname) = target.attribute("name") else {
                continue;
            };
            let source = ch.children().find(|n| n.has_tag_name("source"));
            let path = source.and_then(|s| s.attribute("path")).map(str::to_string);
            if let Some(p) = &path
                && (p.is_empty() || p.chars().any(char::is_control))
            {
                return Err(XmlError::Invalid {
                    what: "channel <source path>",
                    value: p.clone(),
                });
            }
            channels.push(UnixChannel {
                name: cname.to_string(),
                path,
                mode: source.and_then(|s| s.attribute("mode")).map(str::to_string),
                kind,
            });
        }
    }
    Ok(DomainXml {
        name,
        uuid,
        channels,
    })
}

/// A UUID in the 8-4-4-4-12 form or as 32 hex digits (libvirt accepts both), returned
/// lowercase with dashes; `None` if it is neither.
pub fn canonical_uuid(s: &str) -> Option<String> {
    let hex: String = if s.len() == 36 {
        for (i, c) in s.char_indices() {
            if matches!(i, 8 | 13 | 18 | 23) != (c == '-') {
                return None;
            }
        }
        s.chars().filter(|c| *c != '-').collect()
    } else {
        s.to_string()
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XEN: &str = r"<domain type='xen'>
  <name>web1</name>
  <uuid>6F0C1E4E-9A3B-4A53-8D7E-0D9F3F1C2B7A</uuid>
  <os><type>linux</type></os>
  <devices>
    <console type='pty'><target type='xen' port='0'/></console>
    <channel type='pty'><target type='xen' name='placeholder'/></channel>
    <channel type='unix'>
      <source mode='bind' path='/run/xenchan/sockets/web1.sock'/>
      <target type='xen' name='org.xenchan.agent.1'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/other.sock'/>
      <target type='guestfwd' name='org.xenchan.agent.1'/>
    </channel>
  </devices>
</domain>";

    #[test]
    fn reads_name_uuid_and_unix_channels() {
        let d = parse(XEN.as_bytes()).unwrap();
        assert_eq!(d.name.as_deref(), Some("web1"));
        assert_eq!(
            d.uuid.as_deref(),
            Some("6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a")
        );
        assert_eq!(
            d.channels,
            vec![UnixChannel {
                name: "org.xenchan.agent.1".into(),
                path: Some("/run/xenchan/sockets/web1.sock".into()),
                mode: Some("bind".into()),
                kind: ChannelType::Xen,
            }]
        );
        assert_eq!(d.channels_named("org.xenchan.agent.1").count(), 1);
        assert_eq!(d.channels_named("org.qemu.guest_agent.0").count(), 0);
    }

    #[test]
    fn virtio_channel_without_a_path() {
        let d = parse(
            b"<domain type='kvm'><name>k</name><devices>
              <channel type='unix'><target type='virtio' name='org.xenchan.agent.1'/></channel>
              </devices></domain>",
        )
        .unwrap();
        assert_eq!(d.uuid, None);
        assert_eq!(d.channels[0].kind, ChannelType::Virtio);
        assert_eq!(d.channels[0].path, None);
    }

    #[test]
    fn a_status_wrapper_is_looked_into() {
        let d = parse(b"<domstatus state='running'><domain><name>w</name></domain></domstatus>")
            .unwrap();
        assert_eq!(d.name.as_deref(), Some("w"));
        assert!(matches!(
            parse(b"<network><name>default</name></network>"),
            Err(XmlError::NotADomain(r)) if r == "network"
        ));
    }

    #[test]
    fn entities_and_dtds_are_refused_not_expanded() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<domain><name>&b;</name></domain>"#;
        assert!(matches!(parse(bomb.as_bytes()), Err(XmlError::Syntax(_))));
        let external = r#"<!DOCTYPE domain SYSTEM "file:///etc/shadow"><domain/>"#;
        assert!(matches!(
            parse(external.as_bytes()),
            Err(XmlError::Syntax(_))
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"   \n",
            b"<domain>",
            b"<domain><name>x</nam></domain>",
            b"\xff\xfe<domain/>",
            b"<domain><uuid>not-a-uuid</uuid></domain>",
            b"<domain><name></name></domain>",
            b"<domain><devices><channel type='unix'><source path=''/><target type='xen' name='n'/></channel></devices></domain>",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            parse(&vec![b' '; MAX_XML + 1]),
            Err(XmlError::TooLarge)
        ));
    }

    #[test]
    fn uuids_in_both_libvirt_forms() {
        assert_eq!(
            canonical_uuid("6f0c1e4e9a3b4a538d7e0d9f3f1c2b7a").as_deref(),
            Some("6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a")
        );
        for bad in [
            "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7",
            "6f0c1e4e-9a3b-4a53-8d7e0-d9f3f1c2b7a",
            "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7g",
            "",
        ] {
            assert_eq!(canonical_uuid(bad), None, "{bad}");
        }
    }
}
