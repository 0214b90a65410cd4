//! The guest's own view of its identity: the VM UUID Xen publishes.

use std::io::Read;
use std::path::Path;

use tracing::warn;

/// Reads `<root>/sys/hypervisor/uuid`: trimmed, lowercase; `None` if the file is missing
/// or does not hold a UUID (not Xen, or no hypervisor sysfs).
pub fn read_vm_uuid(root: &Path) -> Option<String> {
    let path = root.join("sys/hypervisor/uuid");
    let mut text = String::new();
    std::fs::File::open(&path)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let uuid = text.trim().to_ascii_lowercase();
    if is_uuid(&uuid) {
        Some(uuid)
    } else {
        warn!(file = %path.display(), "ignoring a VM UUID that is not a UUID");
        None
    }
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
    fn missing_or_bad_uuid_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_vm_uuid(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("sys/hypervisor")).unwrap();
        std::fs::write(dir.path().join("sys/hypervisor/uuid"), "not-a-uuid\n").unwrap();
        assert_eq!(read_vm_uuid(dir.path()), None);
    }
}
