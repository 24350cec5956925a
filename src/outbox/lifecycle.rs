//! The lifecycle of one delivery, as an enum with one function per transition (STYLE 4):
//!
//! ```text
//!            claim                delivered
//! Pending ─────────► InFlight ─────────────► Delivered
//!    ▲                 │  │ retry_at
//!    │                 │  └──────────► Retry{at, attempt} ──claim (at ≤ now)──► InFlight
//!    │ requeue         │ dead
//!    └──────────── Dead{reason} ◄── park_gone ── Pending | Retry   (endpoint disabled by a 410)
//! ```
//!
//! `InFlight` lives only in memory: the store keeps an in-flight row as it was before the claim
//! (pending, or retry at a past time), so a crash while a request is on the wire re-sends it
//! with the same `delivery_id` (README, "Guarantees"). [`Lifecycle::after_attempt`] is the pure decision
//! that picks the transition out of a classified attempt and the retry policy.
//!
//! Owns: which transitions exist, and how each state is written to and read from an outbox row
//! (`state`, `attempts`, `next_attempt_at`). Must not: do I/O or read the clock or a global RNG.

use crate::outbox::schedule::{RetryPolicy, Verdict, next_delay};

/// Why a delivery is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// The receiver refused it for good (4xx, 3xx, a refused target…).
    Rejected(String),
    /// Every attempt failed with a retryable error; the last one is kept.
    Exhausted(String),
    /// The endpoint answered 410 Gone, now or earlier: it is disabled until the config changes.
    EndpointGone,
}

impl DeadReason {
    /// The text kept in the row's `last_error`.
    pub fn text(&self) -> String {
        match self {
            DeadReason::Rejected(r) => r.clone(),
            DeadReason::Exhausted(r) => r.clone(),
            DeadReason::EndpointGone => {
                "410 Gone: endpoint disabled until the config changes".to_string()
            }
        }
    }
}

/// Where a delivery is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Queued by a poll (or re-queued by `outbox retry`), never tried since; due now.
    Pending,
    /// Attempt number `attempt` (1-based) is on the wire. Never stored.
    InFlight { attempt: u32 },
    /// A receiver answered 2xx on attempt `attempts`.
    Delivered { attempts: u32 },
    /// `attempt` attempts failed; the next one is due at `at_ms` (unix ms).
    Retry { at_ms: i64, attempt: u32 },
    /// Given up; `outbox retry` puts it back to [`Lifecycle::Pending`].
    Dead { reason: DeadReason, attempts: u32 },
}

/// A transition that the lifecycle does not have (a bug in the caller, never data).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("delivery lifecycle: cannot {transition} from {from:?}")]
pub struct InvalidTransition {
    pub transition: &'static str,
    pub from: Lifecycle,
}

/// The state column of an outbox row.
pub mod column {
    pub const PENDING: &str = "pending";
    pub const DELIVERED: &str = "delivered";
    pub const DEAD: &str = "dead";
    /// Dead because the endpoint is disabled by a 410.
    pub const GONE: &str = "gone";
}

/// How a state is written to an outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub state: &'static str,
    pub attempts: u32,
    /// `None`: leave `next_attempt_at` as it is.
    pub next_attempt_at_ms: Option<i64>,
    pub error: Option<String>,
}

impl Lifecycle {
    fn invalid(self, transition: &'static str) -> InvalidTransition {
        InvalidTransition {
            transition,
            from: self,
        }
    }

    /// Pending, or Retry whose time has come → InFlight with the next attempt number.
    pub fn claim(self, now_ms: i64) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::Pending => Ok(Lifecycle::InFlight { attempt: 1 }),
            Lifecycle::Retry { at_ms, attempt } if at_ms <= now_ms => Ok(Lifecycle::InFlight {
                attempt: attempt.saturating_add(1),
            }),
            other => Err(other.invalid("claim")),
        }
    }

    /// InFlight → Delivered.
    pub fn delivered(self) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::InFlight { attempt } => Ok(Lifecycle::Delivered { attempts: attempt }),
            other => Err(other.invalid("mark delivered")),
        }
    }

    /// InFlight → Retry at `at_ms`.
    pub fn retry_at(self, at_ms: i64) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::InFlight { attempt } => Ok(Lifecycle::Retry { at_ms, attempt }),
            other => Err(other.invalid("schedule a retry")),
        }
    }

    /// InFlight → Dead.
    pub fn dead(self, reason: DeadReason) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::InFlight { attempt } => Ok(Lifecycle::Dead {
                reason,
                attempts: attempt,
            }),
            other => Err(other.invalid("dead-letter")),
        }
    }

    /// Pending or Retry → Dead{EndpointGone}, without an attempt: its endpoint is disabled.
    pub fn park_gone(self) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::Pending => Ok(Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: 0,
            }),
            Lifecycle::Retry { attempt, .. } => Ok(Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: attempt,
            }),
            other => Err(other.invalid("park for a disabled endpoint")),
        }
    }

    /// Dead → Pending, with a fresh attempt count (`outbox retry`); the id is unchanged.
    pub fn requeue(self) -> Result<Lifecycle, InvalidTransition> {
        match self {
            Lifecycle::Dead { .. } => Ok(Lifecycle::Pending),
            other => Err(other.invalid("re-queue")),
        }
    }

    /// The transition an attempt's verdict calls for, from InFlight: delivered, retry at
    /// `now_ms` + the policy's next delay, or dead (rejected, endpoint gone, or attempts used up).
    pub fn after_attempt(
        self,
        verdict: &Verdict,
        policy: &RetryPolicy,
        now_ms: i64,
        rng: &mut impl rand::Rng,
    ) -> Result<Lifecycle, InvalidTransition> {
        let Lifecycle::InFlight { attempt } = self else {
            return Err(self.invalid("settle an attempt"));
        };
        match verdict {
            Verdict::Delivered => self.delivered(),
            Verdict::Retry { reason, .. } => match next_delay(policy, attempt, verdict, rng) {
                Some(delay) => {
                    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                    self.retry_at(now_ms.saturating_add(ms))
                }
                None => self.dead(DeadReason::Exhausted(format!(
                    "{reason} (after {attempt} attempts)"
                ))),
            },
            Verdict::Dead { reason } => self.dead(DeadReason::Rejected(reason.clone())),
            Verdict::Gone => self.dead(DeadReason::EndpointGone),
        }
    }

    /// How this state is written to its row; `None` for InFlight, which is never stored.
    pub fn stored(&self) -> Option<Stored> {
        Some(match self {
            Lifecycle::Pending => Stored {
                state: column::PENDING,
                attempts: 0,
                next_attempt_at_ms: None,
                error: None,
            },
            Lifecycle::InFlight { .. } => return None,
            Lifecycle::Delivered { attempts } => Stored {
                state: column::DELIVERED,
                attempts: *attempts,
                next_attempt_at_ms: None,
                error: None,
            },
            Lifecycle::Retry { at_ms, attempt } => Stored {
                state: column::PENDING,
                attempts: *attempt,
                next_attempt_at_ms: Some(*at_ms),
                error: None,
            },
            Lifecycle::Dead { reason, attempts } => Stored {
                state: if *reason == DeadReason::EndpointGone {
                    column::GONE
                } else {
                    column::DEAD
                },
                attempts: *attempts,
                next_attempt_at_ms: None,
                error: Some(reason.text()),
            },
        })
    }

    /// Reads a row back; an unknown state column is `None` (the row is left alone).
    pub fn from_row(
        state: &str,
        attempts: u32,
        next_attempt_at_ms: i64,
        last_error: Option<&str>,
    ) -> Option<Lifecycle> {
        Some(match state {
            column::PENDING if attempts == 0 => Lifecycle::Pending,
            column::PENDING => Lifecycle::Retry {
                at_ms: next_attempt_at_ms,
                attempt: attempts,
            },
            column::DELIVERED => Lifecycle::Delivered { attempts },
            column::DEAD => Lifecycle::Dead {
                reason: DeadReason::Rejected(last_error.unwrap_or_default().to_string()),
                attempts,
            },
            column::GONE => Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts,
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            schedule: vec![Duration::from_secs(10), Duration::from_secs(100)],
            jitter: 0.0,
            min_after_throttle: Duration::from_secs(60),
        }
    }

    fn retry(throttled: bool) -> Verdict {
        Verdict::Retry {
            reason: "HTTP 500 Internal Server Error".into(),
            throttled,
            retry_after: None,
        }
    }

    #[test]
    fn transitions_table() {
        use Lifecycle::*;
        let dead = || Dead {
            reason: DeadReason::Rejected("HTTP 400".into()),
            attempts: 1,
        };
        let gone = |attempts| Dead {
            reason: DeadReason::EndpointGone,
            attempts,
        };
        let ok = |r: Result<Lifecycle, InvalidTransition>| r.ok();
        // (from, transition, expected)
        let cases: Vec<(Lifecycle, &str, Option<Lifecycle>)> = vec![
            (Pending, "claim", Some(InFlight { attempt: 1 })),
            (
                Retry {
                    at_ms: 100,
                    attempt: 2,
                },
                "claim",
                Some(InFlight { attempt: 3 }),
            ),
            (
                Retry {
                    at_ms: 101,
                    attempt: 2,
                },
                "claim",
                None,
            ),
            (InFlight { attempt: 1 }, "claim", None),
            (Delivered { attempts: 1 }, "claim", None),
            (dead(), "claim", None),
            (
                InFlight { attempt: 2 },
                "delivered",
                Some(Delivered { attempts: 2 }),
            ),
            (Pending, "delivered", None),
            (
                InFlight { attempt: 2 },
                "retry_at",
                Some(Retry {
                    at_ms: 500,
                    attempt: 2,
                }),
            ),
            (Pending, "retry_at", None),
            (
                InFlight { attempt: 1 },
                "dead",
                Some(Dead {
                    reason: DeadReason::Rejected("x".into()),
                    attempts: 1,
                }),
            ),
            (Delivered { attempts: 1 }, "dead", None),
            (Pending, "park_gone", Some(gone(0))),
            (
                Retry {
                    at_ms: 1,
                    attempt: 4,
                },
                "park_gone",
                Some(gone(4)),
            ),
            (InFlight { attempt: 1 }, "park_gone", None),
            (Delivered { attempts: 1 }, "park_gone", None),
            (dead(), "requeue", Some(Pending)),
            (gone(3), "requeue", Some(Pending)),
            (Pending, "requeue", None),
            (Delivered { attempts: 1 }, "requeue", None),
        ];
        for (from, t, want) in cases {
            let got = match t {
                "claim" => ok(from.clone().claim(100)),
                "delivered" => ok(from.clone().delivered()),
                "retry_at" => ok(from.clone().retry_at(500)),
                "dead" => ok(from.clone().dead(DeadReason::Rejected("x".into()))),
                "park_gone" => ok(from.clone().park_gone()),
                "requeue" => ok(from.clone().requeue()),
                _ => unreachable!(),
            };
            assert_eq!(got, want, "{from:?} --{t}-->");
        }
    }

    #[test]
    fn an_attempt_settles_by_its_verdict() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = policy();
        let first = Lifecycle::InFlight { attempt: 1 };
        assert_eq!(
            first
                .clone()
                .after_attempt(&Verdict::Delivered, &p, 1_000, &mut rng),
            Ok(Lifecycle::Delivered { attempts: 1 })
        );
        assert_eq!(
            first
                .clone()
                .after_attempt(&retry(false), &p, 1_000, &mut rng),
            Ok(Lifecycle::Retry {
                at_ms: 11_000,
                attempt: 1
            })
        );
        assert_eq!(
            first
                .clone()
                .after_attempt(&retry(true), &p, 1_000, &mut rng),
            Ok(Lifecycle::Retry {
                at_ms: 61_000,
                attempt: 1
            }),
            "a 429 or a timeout waits at least the throttle floor"
        );
        assert_eq!(
            Lifecycle::InFlight { attempt: 3 }.after_attempt(&retry(false), &p, 1_000, &mut rng),
            Ok(Lifecycle::Dead {
                reason: DeadReason::Exhausted(
                    "HTTP 500 Internal Server Error (after 3 attempts)".into()
                ),
                attempts: 3
            })
        );
        assert_eq!(
            first.clone().after_attempt(
                &Verdict::Dead {
                    reason: "HTTP 302 Found: redirect not followed".into()
                },
                &p,
                1_000,
                &mut rng
            ),
            Ok(Lifecycle::Dead {
                reason: DeadReason::Rejected("HTTP 302 Found: redirect not followed".into()),
                attempts: 1
            })
        );
        assert_eq!(
            first
                .clone()
                .after_attempt(&Verdict::Gone, &p, 1_000, &mut rng),
            Ok(Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: 1
            })
        );
        assert!(
            Lifecycle::Pending
                .after_attempt(&Verdict::Delivered, &p, 1_000, &mut rng)
                .is_err(),
            "only an attempt in flight settles"
        );
    }

    #[test]
    fn every_stored_state_reads_back_the_same() {
        let states = [
            Lifecycle::Pending,
            Lifecycle::Delivered { attempts: 2 },
            Lifecycle::Retry {
                at_ms: 1234,
                attempt: 3,
            },
            Lifecycle::Dead {
                reason: DeadReason::Rejected("HTTP 404 Not Found: not retried".into()),
                attempts: 1,
            },
            Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: 1,
            },
        ];
        for s in states {
            let st = s.stored().unwrap();
            let back = Lifecycle::from_row(
                st.state,
                st.attempts,
                st.next_attempt_at_ms.unwrap_or(1234),
                st.error.as_deref(),
            );
            assert_eq!(back.as_ref(), Some(&s), "{st:?}");
        }
        assert_eq!(Lifecycle::InFlight { attempt: 1 }.stored(), None);
        assert_eq!(Lifecycle::from_row("sideways", 0, 0, None), None);
    }

    #[test]
    fn exhausted_keeps_the_last_error() {
        let d = DeadReason::Exhausted("timed out (after 12 attempts)".into());
        assert_eq!(d.text(), "timed out (after 12 attempts)");
        assert!(DeadReason::EndpointGone.text().contains("410"));
    }
}
