//! The stop signal of every daemon.

/// Completes on the first SIGTERM (systemd's stop) or SIGINT (Ctrl-C) and logs which.
/// Without signal handlers (an unusual sandbox) it never completes: the default action
/// of those signals still ends the process.
pub async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
