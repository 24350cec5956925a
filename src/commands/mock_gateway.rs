use super::{LogArgs, runtime};
use crate::mock::{Scenario, serve};
use std::net::SocketAddr;
use std::path::Path;

pub(super) fn mock_gateway(listen: SocketAddr, scenario: Option<&Path>, log: &LogArgs) -> u8 {
    super::init_logging(log, "info", crate::config::LogFormat::Text);
    let scenario = match scenario {
        Some(p) => Scenario::from_file(p),
        None => Scenario::from_yaml(super::demo::DEMO_SCENARIO),
    };
    let scenario = match scenario {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cartat-rules mock-gateway: {e}");
            return 1;
        }
    };
    let rt = match runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cartat-rules mock-gateway: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cartat-rules mock-gateway: cannot listen on {listen}: {e}");
                return 1;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("mock gateway listening on http://{addr} (GET /chats/{{id}}, GET /__mock/requests); Ctrl-C stops it");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            crate::daemon::signal().await;
            s.cancel();
        });
        match serve(listener, scenario, shutdown).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cartat-rules mock-gateway: {e}");
                1
            }
        }
    })
}
