//! What the agent has applied, kept in `<state-dir>/applied.json` so that a restarted
//! agent tells the broker the truth in its hello and a re-push changes nothing.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;
use xenchan_basics::commit::Batch;
use xenchan_protocol::message::Applied;
use xenchan_protocol::{Digest, ItemResult, Lineage};

use crate::fsat::{self, Owner};

/// The state file's name inside the state folder.
pub const STATE_FILE: &str = "applied.json";

/// The state file is small; anything bigger is not ours.
const STATE_LIMIT: u64 = 4 * 1024 * 1024;

/// The last configuration the agent applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The broker's generation of that configuration.
    pub generation: u64,
    /// Its digest, as received (the broker filtered the document for our capabilities).
    pub digest: Digest,
    /// The store that issued it; absent for a push of a revision-1 broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// What happened to each item.
    pub items: Vec<ItemResult>,
    /// What each applier asked to remember, by applier name (the users applier keeps
    /// whose keys it manages, so that dropping a user from the document removes them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub appliers: BTreeMap<String, serde_json::Value>,
}

impl AppliedState {
    /// The generation and digest, as the hello reports them.
    pub fn applied(&self) -> Applied {
        Applied {
            generation: self.generation,
            digest: self.digest.clone(),
            lineage: self.lineage.clone(),
        }
    }
}

/// The state folder.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating it, mode 0700) the state folder.
    pub(crate) fn open(dir: &Path) -> io::Result<StateStore> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fsat::open_dir(dir)?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The saved state; `None` if there is none or it cannot be read (logged: the agent
    /// then reports nothing applied, and the broker pushes again).
    pub(crate) fn load(&self) -> Option<AppliedState> {
        let dir = fsat::open_dir(&self.dir).ok()?;
        match fsat::read_file_at(&dir, OsStr::new(STATE_FILE), STATE_LIMIT) {
            Ok(None) => None,
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(file = %self.dir.join(STATE_FILE).display(), error = %e, "ignoring unreadable state file");
                    None
                }
            },
            Err(e) => {
                warn!(file = %self.dir.join(STATE_FILE).display(), error = %e, "cannot read state file");
                None
            }
        }
    }

    /// Stages `state` in `batch` (mode 0600, owned like the folder), to replace the state
    /// file when the batch is committed.
    pub(crate) fn stage(&self, state: &AppliedState, batch: &Batch) -> io::Result<()> {
        let dir = fsat::open_dir(&self.dir)?;
        let meta = dir.metadata()?;
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        let shown = self.dir.join(STATE_FILE);
        fsat::stage_at(
            batch,
            &dir,
            OsStr::new(STATE_FILE),
            &bytes,
            Owner {
                uid: meta.uid(),
                gid: meta.gid(),
                mode: 0o600,
            },
            &shown.to_string_lossy(),
        )
    }

    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}
