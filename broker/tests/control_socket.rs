//! The control socket never exists with the umask's permissions: it is bound under a
//! temporary name, chmod'ed 0660 and renamed into place. An inotify watch on its folder,
//! set up before the broker starts, sees every event on the final name.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use inotify::{EventMask, Inotify, WatchMask};
use support::{Dirs, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_appears_once_and_only_with_mode_0660() {
    let dirs = Dirs::new();
    let config = dirs.config();
    let folder = config.control_socket.parent().unwrap().to_path_buf();
    let name = config.control_socket.file_name().unwrap().to_owned();
    let mut inotify = Inotify::init().unwrap();
    inotify
        .watches()
        .add(
            &folder,
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ATTRIB | WatchMask::DELETE,
        )
        .unwrap();

    let broker = TestBroker::start(config.clone()).await;
    let meta = std::fs::symlink_metadata(&config.control_socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);

    // Everything that happened to the final name while the broker started.
    let mut buf = [0u8; 16384];
    let mut on_final = Vec::new();
    let mut temporaries = Vec::new();
    loop {
        match inotify.read_events(&mut buf) {
            Ok(events) => {
                let mut any = false;
                for e in events {
                    any = true;
                    match e.name {
                        Some(n) if n == name => on_final.push(e.mask),
                        Some(n) if n.to_string_lossy().ends_with(".tmp") => {
                            temporaries.push((n.to_owned(), e.mask));
                        }
                        _ => {}
                    }
                }
                if !any {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("inotify: {e}"),
        }
    }
    assert_eq!(
        on_final,
        vec![EventMask::MOVED_TO],
        "the final name only ever appears by rename (no create, no chmod)"
    );
    // The temporary socket was created, chmod'ed and moved away; none is left.
    assert!(
        temporaries
            .iter()
            .any(|(_, m)| m.contains(EventMask::CREATE)),
        "{temporaries:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The embedded store: no cluster in the health.
    assert_eq!(broker.client.health().await.unwrap().cluster, None);
    broker.stop().await.unwrap();
    assert!(!config.control_socket.exists(), "removed at shutdown");
}
