//! Signals: the first SIGTERM or SIGINT asks a command to stop cleanly, a second one exits at once.

use tokio_util::sync::CancellationToken;

/// SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Cancels `stop` on the first signal, after printing `first`; on a second signal prints
/// `second` and exits with 130 without waiting for anything.
pub fn cancel_on_signal(stop: CancellationToken, first: &'static str, second: &'static str) {
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("{first}");
        stop.cancel();
        wait_for_signal().await;
        eprintln!("{second}");
        std::process::exit(130);
    });
}
