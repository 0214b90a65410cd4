//! The guest's own view of its identity: the VM UUID the hypervisor publishes.

use std::io::Read;
use std::path::Path;

use tracing::warn;

/// Where the VM UUID is read, in order, relative to the root: Xen's own file first, then
/// the SMBIOS system UUID (KVM/QEMU's `-uuid`, and Xen HVM guests too), readable by root
/// only.
pub const UUID_SOURCES: &[&str] = &["sys/hypervisor/uuid", "sys/class/dmi/id/product_uuid"];

/// The VM UUID from the first of [`UUID_SOURCES`] under `root` that holds one: trimmed,
/// lowercase; `None` if none does (no hypervisor sysfs, not root for DMI). A source that
/// holds something else, or a placeholder (all zeros, all `f`), is skipped.
pub fn read_vm_uuid(root: &Path) -> Option<String> {
    UUID_SOURCES
        .iter()
        .find_map(|rel| read_uuid_file(&root.join(rel)))
}

fn read_uuid_file(path: &Path) -> Option<String> {
    let mut text = String::new();
    // Bounded: a sysfs file never holds more, and a FIFO or device here must not stall us
    // for more than one short read.
    std::fs::File::open(path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let uuid = text.trim().to_ascii_lowercase();
    if !is_uuid(&uuid) {
        warn!(file = %path.display(), "ignoring a VM UUID that is not a UUID");
        return None;
    }
    if uuid
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .all(|b| b == b'0')
        || uuid
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .all(|b| b == b'f')
    {
        warn!(file = %path.display(), "ignoring a placeholder VM UUID");
        return None;
    }
    Some(uuid)
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_trimmed_and_lowercased() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/hypervisor")).unwrap();
        std::fs::write(
            dir.path().join("sys/hypervisor/uuid"),
            "4D1F0A2B-1C3D-4E5F-8a9b-0C1D2E3F4A5B\n",
        )
        .unwrap();
        assert_eq!(
            read_vm_uuid(dir.path()).as_deref(),
            Some("4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b")
        );
    }

    #[test]
    fn kvm_reads_the_dmi_uuid_and_xen_s_own_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(
            dmi.join("product_uuid"),
            "A1B2C3D4-0000-4000-8000-00000000000A\n",
        )
        .unwrap();
        assert_eq!(
            read_vm_uuid(dir.path()).as_deref(),
            Some("a1b2c3d4-0000-4000-8000-00000000000a")
        );
        std::fs::create_dir_all(dir.path().join("sys/hypervisor")).unwrap();
        std::fs::write(
            dir.path().join("sys/hypervisor/uuid"),
            "4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b\n",
        )
        .unwrap();
        assert_eq!(
            read_vm_uuid(dir.path()).as_deref(),
            Some("4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        // A bad Xen file falls through to DMI.
        std::fs::write(dir.path().join("sys/hypervisor/uuid"), "garbage\n").unwrap();
        assert_eq!(
            read_vm_uuid(dir.path()).as_deref(),
            Some("a1b2c3d4-0000-4000-8000-00000000000a")
        );
    }

    #[test]
    fn placeholder_uuids_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        for p in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        ] {
            std::fs::write(dmi.join("product_uuid"), p).unwrap();
            assert_eq!(read_vm_uuid(dir.path()), None, "{p}");
        }
    }

    #[test]
    fn missing_or_bad_uuid_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_vm_uuid(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("sys/hypervisor")).unwrap();
        std::fs::write(dir.path().join("sys/hypervisor/uuid"), "not-a-uuid\n").unwrap();
        assert_eq!(read_vm_uuid(dir.path()), None);
    }
}
