use super::OutboxAction;
use crate::store::Requeue;
use std::path::Path;

pub(super) fn outbox(config_path: &Path, action: Option<OutboxAction>) -> u8 {
    let Some((_, store)) = super::config_and_state(config_path, false) else {
        return 1;
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let result = match action.unwrap_or(OutboxAction::List {
        state: None,
        limit: 50,
    }) {
        OutboxAction::List { state, limit } => {
            store.list(state.map(|s| s.as_str()), limit).map(|rows| {
                // Endpoints a 410 disabled, on stderr so the table stays parseable.
                for url in store.disabled_endpoints().unwrap_or_default() {
                    eprintln!(
                        "endpoint disabled by a 410 until the config changes: {}",
                        crate::outbox::dispatcher::redact_url(&url)
                    );
                }
                println!(
                    "{:>6}  {:<9}  {:>3}  {:<20}  {:<32}  {:<20}  {:<4}  {:<40}  last error",
                    "id", "state", "try", "updated", "delivery_id", "rule", "code", "url"
                );
                for r in rows {
                    println!(
                        "{:>6}  {:<9}  {:>3}  {:<20}  {:<32}  {:<20}  {:<4}  {:<40}  {}",
                        r.id,
                        r.state,
                        r.attempts,
                        crate::model::rfc3339(r.updated_at_ms.div_euclid(1000)),
                        r.delivery.delivery_id,
                        r.delivery.rule_id,
                        r.last_status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        // Credentials and query values masked: the url may carry a token.
                        crate::net::ssrf::redacted(&r.delivery.url),
                        r.last_error.unwrap_or_default()
                    );
                }
            })
        }
        OutboxAction::Retry { id: Some(id), .. } => match store.requeue(Requeue::One(&id), now) {
            Ok(0) => {
                eprintln!(
                    "cartat-rules: no dead-lettered (dead or gone) or pending delivery `{id}` in the outbox (`outbox list` shows the ids)"
                );
                return 1;
            }
            Ok(n) => {
                println!("queued {n} delivery for re-sending with its original delivery_id");
                Ok(())
            }
            Err(e) => Err(e),
        },
        OutboxAction::Retry {
            id: None,
            dead: true,
        } => store.requeue(Requeue::AllDead, now).map(|n| {
            println!(
                "queued {n} dead-lettered deliveries for re-sending with their original delivery_id"
            )
        }),
        OutboxAction::Retry {
            id: None,
            dead: false,
        } => {
            eprintln!(
                "cartat-rules: say which delivery to re-send (an id from `outbox list`), or --dead for all"
            );
            return 1;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cartat-rules: {e}");
            1
        }
    }
}
