use super::{LogArgs, init_logging, runtime};
use crate::config::{self, EnvMode};
use std::path::Path;

pub(super) fn run(path: &Path, log: &LogArgs) -> u8 {
    let (config, warnings) = match config::load(path, EnvMode::Required) {
        Ok(c) => c,
        Err(d) => {
            eprint!("{d}");
            eprintln!("cartat-rules: the config is not valid; nothing was started");
            return 1;
        }
    };
    eprint!("{warnings}");
    init_logging(log, "info", config.log_format);
    crate::events::set_masking(config.mask_phone_numbers);
    let (rules, rule_warnings) = match crate::rules::load_configured(&config) {
        Ok(r) => r,
        Err(d) => {
            eprint!("{d}");
            eprintln!("cartat-rules: the rules are not valid; nothing was started");
            return 1;
        }
    };
    eprint!("{rule_warnings}");
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cartat-rules: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let listen = config.listen;
        let (poller, dispatcher, running) = match crate::daemon::prepare(config, rules) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cartat-rules: {e:#}");
                return 1;
            }
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            crate::daemon::signal().await;
            s.cancel();
        });
        // What starting up touched (the config reader, the rule compiler, SQLite's schema
        // code) is given back before the polls start, and once more when the first polls (and
        // their first loads of each chat's state) have run (`resident`).
        let bytes = crate::resident::drop_startup_pages();
        tracing::debug!(
            event = "daemon.pages_dropped",
            bytes,
            "dropped the startup code's pages"
        );
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let bytes = crate::resident::drop_startup_pages();
            tracing::debug!(
                event = "daemon.pages_dropped",
                bytes,
                "dropped the startup code's pages"
            );
        });
        if let Some(listener) = crate::daemon::bind_server(listen).await {
            crate::daemon::spawn_server(listener, &running, shutdown.clone());
        }
        crate::daemon::run(
            poller,
            dispatcher,
            running.reloader.clone(),
            running.take_lease_loop(),
            shutdown,
        )
        .await;
        0
    })
}
