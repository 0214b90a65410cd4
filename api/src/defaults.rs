//! Default locations. The broker's configuration file can move each of them
//! (docs/BROKER.md); the CLI's `--socket` defaults to [`CONTROL_SOCKET`].

/// The broker's configuration file.
pub const CONFIG_FILE: &str = "/etc/xenchan/broker.toml";

/// The control API's unix socket.
pub const CONTROL_SOCKET: &str = "/run/xenchan/broker.sock";

/// Folder of the domains' `<vm>.sock` channel sockets.
pub const SOCKET_DIR: &str = "/run/xenchan/sockets";

/// The broker's state folder (SQLite store, lock file).
pub const STATE_DIR: &str = "/var/lib/xenchan";

/// Folder of hook executables.
pub const HOOKS_DIR: &str = "/etc/xenchan/hooks";

/// The group of operators (every control API call); the package creates it.
pub const OPERATOR_GROUP: &str = "xenchan";

/// The group of read-only callers (GET calls and metrics); the package creates it.
pub const READ_ONLY_GROUP: &str = "xenchan-ro";
