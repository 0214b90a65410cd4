//! Client <-> server round trips over real unix sockets.

mod common;

use common::{Env, GUEST};
use xenchan_xenstore::path::PathError;
use xenchan_xenstore::{Access, Errno, Error, Perms};

#[test]
fn write_read_directory_rm() {
    let env = Env::new();
    let mut c = env.dom0();
    c.write("/test/a/b", "hello").unwrap();
    assert_eq!(c.read("/test/a/b").unwrap(), b"hello");
    assert_eq!(c.read_string("/test/a/b").unwrap(), "hello");
    // Parents were created with empty values.
    assert_eq!(c.read("/test/a").unwrap(), b"");
    c.write("/test/a/c", b"\x01binary\0ok").unwrap();
    assert_eq!(c.read("/test/a/c").unwrap(), b"\x01binary\0ok");
    assert_eq!(c.directory("/test/a").unwrap(), vec!["b", "c"]);
    assert!(c.directory("/test/a/b").unwrap().is_empty());
    c.rm("/test/a").unwrap();
    assert!(c.read("/test/a/b").unwrap_err().is_not_found());
    assert_eq!(c.directory("/test").unwrap(), Vec::<String>::new());
    // Removing something already gone is fine; under a missing parent it is not.
    c.rm("/test/a").unwrap();
    assert!(c.rm("/test/nope/x").unwrap_err().is_not_found());
    // The server side sees the same tree.
    c.write("/test/z", "1").unwrap();
    assert_eq!(
        env.server.read("/test/z").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn mkdir_keeps_existing_values() {
    let env = Env::new();
    let mut c = env.dom0();
    c.mkdir("/m/n").unwrap();
    assert_eq!(c.read("/m/n").unwrap(), b"");
    c.write("/m/n", "v").unwrap();
    c.mkdir("/m/n").unwrap();
    assert_eq!(c.read("/m/n").unwrap(), b"v");
    assert!(c.exists("/m/n").unwrap());
    assert!(!c.exists("/m/none").unwrap());
}

#[test]
fn not_found_is_an_enoent_error_naming_the_path() {
    let env = Env::new();
    let mut c = env.dom0();
    let err = c.read("/does/not/exist").unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.errno(), Some(&Errno::ENOENT));
    assert_eq!(err.to_string(), "xenstore READ /does/not/exist: ENOENT");
    assert!(c.directory("/does/not").unwrap_err().is_not_found());
    assert!(c.get_perms("/does").unwrap_err().is_not_found());
    // The connection is still fine after errors.
    c.write("/ok", "1").unwrap();
}

#[test]
fn relative_paths_resolve_against_the_callers_domain() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    assert_eq!(g.read_string("name").unwrap(), "vm-five");
    assert_eq!(
        g.read_string("device/console/1/name").unwrap(),
        "org.xenchan.0"
    );
    g.write("data/hello", "world").unwrap();
    assert_eq!(
        env.server
            .read("/local/domain/5/data/hello")
            .unwrap()
            .as_deref(),
        Some(&b"world"[..])
    );
    // On the dom0 socket a relative path means /local/domain/0.
    let mut d = env.dom0();
    assert_eq!(d.read_string("name").unwrap(), "Domain-0");
}

#[test]
fn get_domain_path_and_introduced() {
    let env = Env::with_guests();
    let mut c = env.dom0();
    assert_eq!(c.get_domain_path(5).unwrap(), "/local/domain/5");
    assert_eq!(c.get_domain_path(0).unwrap(), "/local/domain/0");
    assert!(c.is_domain_introduced(5).unwrap());
    assert!(c.is_domain_introduced(0).unwrap());
    assert!(!c.is_domain_introduced(77).unwrap());
}

#[test]
fn domain_nodes_written_by_introduce() {
    let env = Env::with_guests();
    let mut c = env.dom0();
    assert_eq!(c.read_string("/local/domain/5/name").unwrap(), "vm-five");
    assert_eq!(c.read_string("/local/domain/5/domid").unwrap(), "5");
    let vm = c.read_string("/local/domain/5/vm").unwrap();
    assert_eq!(vm, format!("/vm/{}", common::UUID));
    assert_eq!(c.read_string(&format!("{vm}/uuid")).unwrap(), common::UUID);
    assert_eq!(
        c.get_perms("/local/domain/5").unwrap(),
        Perms::read_only_to(5)
    );
}

#[test]
fn perms_round_trip() {
    let env = Env::new();
    let mut c = env.dom0();
    c.write("/p", "").unwrap();
    assert_eq!(c.get_perms("/p").unwrap(), Perms::dom0_only());
    let perms = Perms::owned_by(3, Access::Read).with(4, Access::Both);
    c.set_perms("/p", &perms).unwrap();
    assert_eq!(c.get_perms("/p").unwrap(), perms);
    assert_eq!(c.get_perms("/p").unwrap().to_string(), "r3,b4");
}

#[test]
fn client_validates_paths_before_sending() {
    let env = Env::new();
    let mut c = env.dom0();
    for (bad, why) in [
        ("", PathError::Empty),
        ("/a//b", PathError::DoubleSlash),
        ("/a/", PathError::TrailingSlash),
        (
            "/a b",
            PathError::BadByte {
                byte: b' ',
                offset: 2,
            },
        ),
        ("/a\0b", PathError::BadByte { byte: 0, offset: 2 }),
        ("@introduceDomain", PathError::Special),
    ] {
        match c.read(bad) {
            Err(Error::InvalidPath { path, reason }) => {
                assert_eq!(path, bad);
                assert_eq!(reason, why);
            }
            other => panic!("{bad:?}: expected InvalidPath, got {other:?}"),
        }
    }
    let long = format!("/{}", "x".repeat(3072));
    assert!(matches!(
        c.write(&long, "v"),
        Err(Error::InvalidPath { .. })
    ));
    // Connection unaffected.
    c.write("/fine", "1").unwrap();
}

#[test]
fn oversized_request_is_refused_client_side() {
    let env = Env::new();
    let mut c = env.dom0();
    let err = c.write("/big", vec![b'x'; 4096]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    // Just under the limit (path + nul + value = 4096) works.
    let value = vec![b'y'; 4096 - "/big".len() - 1];
    c.write("/big", &value).unwrap();
    assert_eq!(c.read("/big").unwrap(), value);
}

#[test]
fn long_directory_uses_directory_part() {
    let env = Env::new();
    let mut c = env.dom0();
    // 300 children of 20-byte names: ~6.3 KB of listing, more than one reply.
    let names: Vec<String> = (0..300).map(|i| format!("child-{i:014}")).collect();
    c.transaction(|tx| {
        for n in &names {
            tx.write(&format!("/wide/{n}"), "")?;
        }
        Ok(())
    })
    .unwrap();
    let mut got = c.directory("/wide").unwrap();
    got.sort();
    assert_eq!(got, names);
}

#[test]
fn many_clients_share_one_tree() {
    let env = Env::new();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let mut c = env.dom0();
            std::thread::spawn(move || {
                for j in 0..50 {
                    c.write(&format!("/shared/{i}/{j}"), j.to_string()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = env.dom0();
    assert_eq!(c.directory("/shared").unwrap().len(), 8);
    assert_eq!(c.directory("/shared/7").unwrap().len(), 50);
    assert_eq!(c.read_string("/shared/3/49").unwrap(), "49");
}
