//! Where the managers' own parsers are found for [`super::Manager::validate`], and how
//! they are run: from a folder laid out like a root (the guest itself when we configure
//! `/`), each bounded by the command deadline, with the folder's libraries first when it
//! is not `/` (the parsers unpacked by `scripts/net-tools.sh` for the tests).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::activate;

/// The folder holding the parsers, or none (validation is skipped).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    root: Option<PathBuf>,
}

impl Tools {
    pub(crate) fn new(root: Option<PathBuf>) -> Tools {
        Tools { root }
    }

    /// The first of `rels` that exists under the folder.
    pub(crate) fn find(&self, rels: &[&str]) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        rels.iter().map(|r| root.join(r)).find(|p| p.is_file())
    }

    /// Runs `program args…` with `input` on stdin; `Ok` carries its standard error.
    pub(crate) fn run(
        &self,
        program: &Path,
        args: &[&std::ffi::OsStr],
        input: Option<&[u8]>,
    ) -> Result<String, String> {
        let mut cmd = vec![program.to_string_lossy().into_owned()];
        cmd.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
        let lib = self.library_path();
        let env: Vec<(&str, &std::ffi::OsStr)> = lib
            .as_ref()
            .map(|l| ("LD_LIBRARY_PATH", l.as_os_str()))
            .into_iter()
            .collect();
        activate::run_with(&cmd, input, &env)
    }

    /// `<folder>/usr/lib/<multiarch>:<folder>/usr/lib` when the folder is not `/`.
    fn library_path(&self) -> Option<OsString> {
        let root = self.root.as_ref().filter(|r| *r != Path::new("/"))?;
        let usr_lib = root.join("usr/lib");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&usr_lib)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
            .map(|e| e.path())
            .collect();
        dirs.push(usr_lib);
        std::env::join_paths(dirs).ok()
    }
}

/// A private temporary folder for a parser that reads files, not stdin.
pub(crate) fn scratch() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("xenchan-netconf-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary folder to check the configuration: {e}"))
}

/// The parsers unpacked by `scripts/net-tools.sh`, for unit tests; `None` (the test
/// skips) when they are not there.
#[cfg(test)]
pub(crate) fn test_tools() -> Option<Tools> {
    let root = std::env::var_os("XENCHAN_NET_TOOLS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/net"),
        PathBuf::from,
    );
    if root.join("usr/bin/nmcli").exists() {
        Some(Tools::new(Some(root)))
    } else {
        eprintln!("SKIP: the managers' parsers are not unpacked: run scripts/net-tools.sh");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::of;
    use crate::render::{RenderedFile, Renderer};

    fn file(path: &str, content: &str) -> RenderedFile {
        RenderedFile {
            path: path.into(),
            content: content.into(),
            mode: 0o600,
        }
    }

    #[test]
    fn refusals_carry_the_managers_own_words() {
        let Some(tools) = test_tools() else { return };
        let nm = of(Renderer::NetworkManager);
        let bad = "[connection]\nid=x\nuuid=a659dc0c-e540-8be4-abc9-c2b22e52649d\ntype=ethernet\n\
                   [ipv4]\nmethod=disabled\ndns=192.0.2.53;\n";
        let e = nm
            .validate(&tools, &file("x.nmconnection", bad), None)
            .unwrap_err();
        assert!(
            e.starts_with("NetworkManager refuses the profile")
                && e.contains("ipv4.dns: this property is not allowed for 'method=disabled'"),
            "{e}"
        );
        let good = bad.replace("dns=192.0.2.53;\n", "");
        nm.validate(&tools, &file("x.nmconnection", &good), None)
            .unwrap();

        let np = of(Renderer::Netplan);
        let bad = "network:\n  version: 2\n  ethernets:\n    a:\n      dhcp4: maybe\n";
        let e = np
            .validate(&tools, &file("etc/netplan/90-xenchan.yaml", bad), None)
            .unwrap_err();
        assert!(e.contains("invalid boolean value 'maybe'"), "{e}");

        // Without the tool (an image root), nothing is checked.
        let none = Tools::new(None);
        nm.validate(&none, &file("x.nmconnection", "garbage"), None)
            .unwrap();
    }
}
