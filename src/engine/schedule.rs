//! When each chat is polled next: the pure part of the poller's scheduler. Time is an input.
//!
//! Every chat has a hard due time, `interval` after its last poll started (a little before,
//! so waiting for the budget does not push it past its interval), or its backoff after a
//! failure. With the adaptive scheduler, chats with recent inbound traffic also get a soft due
//! time: the rate budget left over after every chat's interval is shared among active chats
//! in proportion to the square root of their message rate (which minimises the mean detection
//! latency over messages), never sooner than [`MIN_SOFT_PERIOD`]. Hard due times always go
//! first, so the spare budget never delays a chat past its interval.
//!
//! A 401 from one chat is that chat's problem (it backs off like any failure) unless a second
//! chat also gets one before any other chat is served: then the token is bad and a gate
//! closes for every chat: after a pause one chat probes the token — never the chat that was
//! last refused — the others wait for its answer, and each failed probe doubles the pause (a
//! slow retry, not a loop).
//!
//! Owns: the order of polls. Must not: do I/O or wait (the driver in [`super::poller`] does).

use crate::config::SchedulerKind;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use tokio::time::Instant;

/// The shortest period the adaptive scheduler polls a busy chat at.
pub const MIN_SOFT_PERIOD: Duration = Duration::from_millis(500);
/// How fast a chat's activity is forgotten (the time constant of its message-rate estimate).
pub const ACTIVITY_TAU: Duration = Duration::from_secs(120);
/// Below this decayed message count a chat counts as idle.
const ACTIVE_MIN_SCORE: f64 = 0.05;
/// The share of the rate budget the scheduler plans to use (the rest absorbs gap recovery,
/// retries and timing jitter).
const PLANNED_SHARE: f64 = 0.85;
/// The first pause after a 401, and the longest.
pub const AUTH_PAUSE_FIRST: Duration = Duration::from_secs(30);
pub const AUTH_PAUSE_MAX: Duration = Duration::from_secs(300);

/// How a poll ended, as far as scheduling cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finished {
    /// Polled; `inbound` new messages from others.
    Ok { inbound: usize },
    /// Failed; try this chat again after `retry_in`.
    Failed { retry_in: Duration },
    /// The gateway said 429 (the budget is paused for everyone): again as soon as it resumes.
    RateLimited,
    /// The gateway said 401 for this chat; if the token turns out to be fine (another chat is
    /// served), this chat alone tries again after `retry_in`.
    Unauthorized { retry_in: Duration },
}

/// What a 401 meant, as the schedule judged it (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Only this chat was refused so far: it backs off, the others go on.
    ThisChat,
    /// A second chat was refused: the token is bad, every chat is paused.
    TokenRefused,
    /// A probe was refused again: the pause doubles.
    StillRefused,
}

#[derive(Clone, Debug)]
struct Slot {
    interval: Duration,
    last_start: Option<Instant>,
    in_flight: bool,
    failed: bool,
    hard_gen: u64,
    soft_gen: u64,
    /// Decayed count of inbound messages, as of `score_at`.
    score: f64,
    score_at: Instant,
    soft_period: Option<Duration>,
    /// Polls finished so far.
    polls: u64,
    /// A moment the chat's periodic (hard) polls are aligned to.
    phase: Option<Instant>,
    /// No longer watched (a config reload removed it): never due again. Its index is not
    /// reused, so a poll of it still in flight finishes into its own slot.
    retired: bool,
}

impl Slot {
    /// A chat never polled yet.
    fn new(interval: Duration, now: Instant) -> Slot {
        Slot {
            interval,
            last_start: None,
            in_flight: false,
            failed: false,
            hard_gen: 0,
            soft_gen: 0,
            score: 0.0,
            score_at: now,
            soft_period: None,
            polls: 0,
            phase: None,
            retired: false,
        }
    }
}

#[derive(Clone, Debug)]
struct AuthGate {
    until: Instant,
    pause: Duration,
    probing: bool,
    /// The chat refused last: the next probe is another one.
    avoid: usize,
}

type Heap = BinaryHeap<Reverse<(Instant, usize, u64)>>;

/// The schedule of every watched chat.
#[derive(Debug)]
pub struct Schedule {
    kind: SchedulerKind,
    chats: Vec<Slot>,
    hard: Heap,
    soft: Heap,
    /// The budget, polls a second (the config's `api.rate_limit`).
    per_second: u32,
    /// Polls per second left for soft polls: the budget less what the intervals take.
    spare_per_second: f64,
    auth: Option<AuthGate>,
    /// A chat refused with 401 while every other chat was fine so far.
    suspect: Option<usize>,
    /// Periodic polls are aligned to a grid of this step from `epoch` (zero: not aligned).
    coalesce: Duration,
    epoch: Instant,
}

/// How much earlier than its interval a chat is due, so budget waits do not make it late.
fn slack(interval: Duration) -> Duration {
    (interval / 20).min(Duration::from_millis(250))
}

impl Schedule {
    /// Every chat due at `now`.
    pub fn new(
        intervals: &[Duration],
        kind: SchedulerKind,
        per_second: u32,
        now: Instant,
    ) -> Schedule {
        let mut s = Schedule {
            kind,
            chats: intervals
                .iter()
                .map(|&interval| Slot::new(interval, now))
                .collect(),
            hard: Heap::new(),
            soft: Heap::new(),
            per_second,
            spare_per_second: 0.0,
            auth: None,
            suspect: None,
            coalesce: Duration::ZERO,
            epoch: now,
        };
        for i in 0..intervals.len() {
            s.hard.push(Reverse((now, i, 0)));
        }
        s.rebase();
        s
    }

    /// Watches one more chat (a config reload added it), due at `now`; returns its index.
    pub fn add(&mut self, interval: Duration, now: Instant) -> usize {
        let index = self.chats.len();
        self.chats.push(Slot::new(interval, now));
        self.hard.push(Reverse((now, index, 0)));
        self.rebase();
        index
    }

    /// Stops watching chat `index` (a config reload removed it): it is never due again.
    pub fn retire(&mut self, index: usize) {
        if let Some(c) = self.chats.get_mut(index) {
            c.retired = true;
            c.hard_gen += 1;
            c.soft_gen += 1;
            c.soft_period = None;
        }
        if self.suspect == Some(index) {
            self.suspect = None;
        }
        self.rebase();
    }

    /// Watches a retired chat again (a reload added back a chat it had removed), due at
    /// `now`, or once a poll of it still in flight finishes.
    pub fn revive(&mut self, index: usize, interval: Duration, now: Instant) {
        let Some(c) = self.chats.get_mut(index) else {
            return;
        };
        c.retired = false;
        c.failed = false;
        c.interval = interval;
        c.phase = None;
        c.hard_gen += 1;
        c.soft_gen += 1;
        if !c.in_flight {
            self.hard.push(Reverse((now, index, c.hard_gen)));
        }
        self.rebase();
    }

    /// A new interval for chat `index`, from its next poll on (its phase is chosen anew).
    pub fn set_interval(&mut self, index: usize, interval: Duration, now: Instant) {
        let Some(c) = self.chats.get_mut(index) else {
            return;
        };
        if c.retired || c.interval == interval {
            return;
        }
        c.interval = interval;
        c.phase = None;
        c.hard_gen += 1;
        if !c.in_flight {
            let at = c
                .last_start
                .map_or(now, |s| s + interval - slack(interval))
                .max(now);
            self.hard.push(Reverse((at, index, c.hard_gen)));
        }
        self.rebase();
    }

    /// The budget is `per_second` polls a second from now (a config reload).
    pub fn set_rate(&mut self, per_second: u32) {
        self.per_second = per_second;
        self.rebase();
    }

    /// The share of the budget left for soft polls: what the watched chats' intervals do not
    /// take.
    fn rebase(&mut self) {
        let base: f64 = self
            .chats
            .iter()
            .filter(|c| !c.retired)
            .map(|c| 1.0 / c.interval.as_secs_f64().max(0.001))
            .sum();
        self.spare_per_second = f64::from(self.per_second) * PLANNED_SHARE - base;
    }

    /// Whether chat `index` is watched (not retired by a config reload).
    pub fn is_live(&self, index: usize) -> bool {
        self.chats.get(index).is_some_and(|c| !c.retired)
    }

    /// Aligns the chats' periodic polls to a grid of step `window`: those whose phase falls in
    /// the same step are due at the same instant and polled in one bunch (one wake-up of the
    /// daemon and of the network stack for the lot, instead of one each). A chat keeps its
    /// interval; only its phase moves, by less than `window`.
    pub fn coalescing(mut self, window: Duration) -> Schedule {
        self.coalesce = window;
        self
    }

    fn live_top(heap: &mut Heap, chats: &[Slot], soft: bool) -> Option<(Instant, usize)> {
        while let Some(&Reverse((at, i, g))) = heap.peek() {
            let c = &chats[i];
            let gen_ok = if soft {
                g == c.soft_gen
            } else {
                g == c.hard_gen
            };
            if gen_ok && !c.in_flight && !c.retired {
                return Some((at, i));
            }
            heap.pop();
        }
        None
    }

    /// The earliest moment a poll may be due (None: nothing until a poll finishes).
    pub fn next_at(&mut self) -> Option<Instant> {
        let hard = Self::live_top(&mut self.hard, &self.chats, false).map(|(t, _)| t);
        let soft = Self::live_top(&mut self.soft, &self.chats, true).map(|(t, _)| t);
        let t = match (hard, soft) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        match &self.auth {
            Some(g) if g.probing => None,
            Some(g) => Some(t.max(g.until)),
            None => Some(t),
        }
    }

    /// Takes the chat to poll at `now`, if one is due: hard due times first (earliest first),
    /// then soft ones.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        if let Some(g) = &self.auth
            && (g.probing || now < g.until)
        {
            return None;
        }
        let pick = match &self.auth {
            // The probe: any chat but the one refused last (it may be that chat's problem).
            Some(g) => self.probe_pick(g.avoid),
            None => match Self::live_top(&mut self.hard, &self.chats, false) {
                Some((at, i)) if at <= now => Some(i),
                _ => match Self::live_top(&mut self.soft, &self.chats, true) {
                    Some((at, i)) if at <= now => Some(i),
                    _ => None,
                },
            },
        }?;
        let c = &mut self.chats[pick];
        c.in_flight = true;
        c.last_start = Some(now);
        c.hard_gen += 1;
        c.soft_gen += 1;
        if let Some(g) = &mut self.auth {
            g.probing = true;
        }
        Some(pick)
    }

    /// The chat to probe the token with: the earliest due by its hard time that is not
    /// `avoid` (unless it is the only one), whatever its due time (the gate's pause is over).
    fn probe_pick(&mut self, avoid: usize) -> Option<usize> {
        let live = self.chats.iter().filter(|c| !c.retired).count();
        let mut best: Option<(Instant, usize)> = None;
        for &Reverse((at, i, g)) in self.hard.iter() {
            let c = &self.chats[i];
            if g != c.hard_gen || c.in_flight || c.retired || (i == avoid && live > 1) {
                continue;
            }
            if best.is_none_or(|b| (at, i) < b) {
                best = Some((at, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Records how chat `index`'s poll ended and schedules its next one; for a 401, says what
    /// it was judged to mean.
    pub fn finished(&mut self, index: usize, now: Instant, how: Finished) -> Option<AuthVerdict> {
        let (coalesce, epoch) = (self.coalesce, self.epoch);
        let anchor_of = |start: Instant, period: Duration| {
            aligned(coalesce, epoch, start + period.mul_f64(spread(index)))
        };
        let c = self.chats.get_mut(index)?;
        c.in_flight = false;
        if c.retired {
            // Its answer says nothing any more: a probe it was is over without a verdict (the
            // next one asks a chat still watched).
            if let Some(g) = &mut self.auth {
                g.probing = false;
            }
            if self.suspect == Some(index) {
                self.suspect = None;
            }
            return None;
        }
        c.polls += 1;
        c.hard_gen += 1;
        c.soft_gen += 1;
        let start = c.last_start.unwrap_or(now);
        let hard_at = match how {
            Finished::Ok { inbound } => {
                c.failed = false;
                c.score = decayed(c.score, c.score_at, now) + inbound as f64;
                c.score_at = now;
                let period = c.interval - slack(c.interval);
                // Every chat is first polled at start, as fast as the budget allows. Each then
                // keeps a fixed phase, spread over its interval: due times neither stay bunched
                // from the start nor drift into bunches when a backlog is served (a bunch of
                // hard due times would starve the soft polls while it lasts).
                // With coalescing, the phase is moved up to the grid (chats sharing a step share
                // their due times from then on: same anchor, same period).
                let anchor = *c.phase.get_or_insert_with(|| anchor_of(start, period));
                next_phase(anchor, period, start)
            }
            Finished::Failed { retry_in } => {
                c.failed = true;
                now + retry_in
            }
            Finished::RateLimited => now,
            Finished::Unauthorized { retry_in } => {
                c.failed = true;
                now + retry_in
            }
        };
        let soft_at = match (how, c.soft_period) {
            (Finished::Ok { .. }, Some(p)) if self.kind == SchedulerKind::Adaptive => {
                Some(start + p)
            }
            _ => None,
        };
        self.hard.push(Reverse((hard_at, index, c.hard_gen)));
        if let Some(t) = soft_at {
            self.soft.push(Reverse((t, index, c.soft_gen)));
        }
        match (how, &mut self.auth) {
            (Finished::Unauthorized { .. }, Some(g)) if g.probing => {
                g.pause = (g.pause * 2).min(AUTH_PAUSE_MAX);
                g.until = now + g.pause;
                g.probing = false;
                g.avoid = index;
                Some(AuthVerdict::StillRefused)
            }
            (Finished::Unauthorized { .. }, Some(g)) => {
                g.avoid = index;
                Some(AuthVerdict::StillRefused)
            }
            (Finished::Unauthorized { .. }, None) => match self.suspect {
                Some(other) if other != index => {
                    self.suspect = None;
                    self.auth = Some(AuthGate {
                        until: now + AUTH_PAUSE_FIRST,
                        pause: AUTH_PAUSE_FIRST,
                        probing: false,
                        avoid: index,
                    });
                    Some(AuthVerdict::TokenRefused)
                }
                _ => {
                    self.suspect = Some(index);
                    Some(AuthVerdict::ThisChat)
                }
            },
            // Anything but a 401 means the token was accepted (or never checked): open.
            (Finished::RateLimited, Some(g)) if g.probing => {
                g.probing = false;
                None
            }
            (Finished::Ok { .. }, _) => {
                self.auth = None;
                // Another chat was served: a 401 the suspect got is its own.
                if self.suspect != Some(index) {
                    self.suspect = None;
                }
                None
            }
            (_, Some(_)) => {
                self.auth = None;
                None
            }
            (_, None) => None,
        }
    }

    /// Whether every chat is paused by a 401 (and until when).
    pub fn auth_paused_until(&self) -> Option<Instant> {
        self.auth.as_ref().map(|g| g.until)
    }

    /// Shares the spare budget among the active chats (adaptive only); call about once a second.
    pub fn recompute(&mut self, now: Instant) {
        if self.kind != SchedulerKind::Adaptive {
            return;
        }
        let rates: Vec<Option<f64>> = self
            .chats
            .iter()
            .map(|c| {
                let s = decayed(c.score, c.score_at, now);
                (!c.failed && !c.retired && s >= ACTIVE_MIN_SCORE)
                    .then(|| (s / ACTIVITY_TAU.as_secs_f64()).sqrt())
            })
            .collect();
        let sum_w: f64 = rates.iter().flatten().sum();
        for (i, w) in rates.into_iter().enumerate() {
            let c = &mut self.chats[i];
            let period = match w {
                Some(w) if self.spare_per_second > 0.0 && w > 0.0 => {
                    let p = Duration::from_secs_f64((sum_w / (w * self.spare_per_second)).min(1e6))
                        .max(MIN_SOFT_PERIOD);
                    (p < c.interval - slack(c.interval)).then_some(p)
                }
                _ => None,
            };
            let changed = match (c.soft_period, period) {
                (Some(a), Some(b)) => {
                    let (a, b) = (a.as_secs_f64(), b.as_secs_f64());
                    (a - b).abs() > 0.1 * a
                }
                (a, b) => a.is_some() != b.is_some(),
            };
            if !changed {
                continue;
            }
            c.soft_period = period;
            c.soft_gen += 1;
            if let (Some(p), false) = (period, c.in_flight) {
                let at = c.last_start.map_or(now, |s| s + p);
                self.soft.push(Reverse((at, i, c.soft_gen)));
            }
        }
    }

    /// The soft period of chat `index`, if it is polled sooner than its interval.
    pub fn soft_period(&self, index: usize) -> Option<Duration> {
        self.chats.get(index).and_then(|c| c.soft_period)
    }
}

/// The first `anchor + k·period` (k ≥ 0) after `start`: at most one period after it.
fn next_phase(anchor: Instant, period: Duration, start: Instant) -> Instant {
    if anchor > start {
        return anchor;
    }
    let p = period.as_secs_f64().max(0.001);
    let k = ((start - anchor).as_secs_f64() / p).floor() + 1.0;
    let next = anchor + period.mul_f64(k);
    if next <= start { next + period } else { next }
}

/// A well-spread fraction in [0.05, 1) for chat `index` (golden-ratio sequence): the phases of
/// the chats' periodic polls end up uniform over the interval, whatever the start-up order.
fn spread(index: usize) -> f64 {
    let x = (index as f64 + 1.0) * 0.618_033_988_749_895;
    0.05 + 0.95 * x.fract()
}

/// `at` moved up to the next step of the grid of step `window` from `epoch` (zero: as is).
fn aligned(window: Duration, epoch: Instant, at: Instant) -> Instant {
    if window.is_zero() || at <= epoch {
        return at;
    }
    let steps = ((at - epoch).as_secs_f64() / window.as_secs_f64()).ceil();
    epoch + window.mul_f64(steps)
}

fn decayed(score: f64, at: Instant, now: Instant) -> f64 {
    let dt = now.saturating_duration_since(at).as_secs_f64();
    score * (-dt / ACTIVITY_TAU.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Runs a schedule for `secs` seconds at `per_second` polls/s, with the chats in `busy`
    /// receiving one inbound message per poll; returns the poll start times per chat.
    fn simulate(
        kind: SchedulerKind,
        chats: usize,
        busy: &[usize],
        interval: Duration,
        per_second: u32,
        secs: u64,
    ) -> Vec<Vec<Instant>> {
        let t0 = Instant::now();
        let mut s = Schedule::new(&vec![interval; chats], kind, per_second, t0);
        let mut starts = vec![Vec::new(); chats];
        let step = S / per_second;
        let mut now = t0;
        let mut last_recompute = t0;
        let end = t0 + S * secs as u32;
        while now < end {
            if now - last_recompute >= S {
                s.recompute(now);
                last_recompute = now;
            }
            if let Some(i) = s.pop_due(now) {
                starts[i].push(now);
                // Polls take no time here: finished at once.
                let inbound = usize::from(busy.contains(&i));
                s.finished(i, now, Finished::Ok { inbound });
            }
            now += step;
        }
        starts
    }

    #[test]
    fn chats_a_reload_adds_removes_or_gives_a_new_interval_are_polled_accordingly() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[S, S], SchedulerKind::RoundRobin, 10, t0);
        let mut polled = vec![0u32; 3];
        let mut now = t0;
        let run = |s: &mut Schedule, until: Instant, polled: &mut Vec<u32>, now: &mut Instant| {
            while *now < until {
                while let Some(i) = s.pop_due(*now) {
                    polled[i] += 1;
                    s.finished(i, *now, Finished::Ok { inbound: 0 });
                }
                *now += Duration::from_millis(10);
            }
        };
        run(&mut s, t0 + S * 3, &mut polled, &mut now);
        assert!(
            (3..=4).contains(&polled[0]) && polled[0] == polled[1],
            "{polled:?}"
        );
        // Chat 2 comes, chat 0 goes, chat 1 is polled every 500 ms from now.
        assert_eq!(s.add(S, now), 2);
        s.retire(0);
        s.set_interval(1, S / 2, now);
        assert!(!s.is_live(0) && s.is_live(1) && s.is_live(2));
        let before = polled.clone();
        run(&mut s, now + S * 4, &mut polled, &mut now);
        assert_eq!(
            polled[0], before[0],
            "a retired chat is not polled: {polled:?}"
        );
        assert!((7..=10).contains(&(polled[1] - before[1])), "{polled:?}");
        assert!((4..=5).contains(&(polled[2] - before[2])), "{polled:?}");
        // A poll of a retired chat that was in flight finishes without being scheduled again.
        assert_eq!(s.finished(0, now, Finished::Ok { inbound: 0 }), None);
        assert!(s.next_at().is_some());
        run(&mut s, now + S * 2, &mut polled, &mut now);
        assert_eq!(polled[0], before[0]);
    }

    fn max_gap(starts: &[Instant]) -> Duration {
        starts
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    #[test]
    fn round_robin_polls_every_chat_on_its_interval_and_no_sooner() {
        let starts = simulate(SchedulerKind::RoundRobin, 20, &[3], 10 * S, 10, 60);
        for (i, s) in starts.iter().enumerate() {
            assert!((6..=7).contains(&s.len()), "chat {i}: {} polls", s.len());
            assert!(max_gap(s) <= 10 * S, "chat {i}: {:?}", max_gap(s));
        }
    }

    #[test]
    fn adaptive_polls_busy_chats_sooner_and_every_chat_within_its_interval() {
        let busy = [0, 7, 13];
        let starts = simulate(SchedulerKind::Adaptive, 100, &busy, 20 * S, 10, 120);
        for (i, s) in starts.iter().enumerate() {
            assert!(max_gap(s) <= 20 * S, "chat {i} late: {:?}", max_gap(s));
            if busy.contains(&i) {
                assert!(s.len() > 60, "busy chat {i} polled only {} times", s.len());
            } else {
                assert!(s.len() <= 8, "idle chat {i} polled {} times", s.len());
            }
        }
        let total: usize = starts.iter().map(Vec::len).sum();
        assert!(total <= 120 * 10, "within the budget: {total}");
    }

    /// Drives a schedule with an unlimited budget, waking only at `next_at` and polling every
    /// chat due then (polls take 20 ms); returns the wake-ups that started a poll after the
    /// first two seconds (the start-up burst), and the poll start times per chat.
    fn wakeups(chats: usize, coalesce: Duration, secs: u32) -> (Vec<Instant>, Vec<Vec<Instant>>) {
        let t0 = Instant::now();
        let mut s = Schedule::new(
            &vec![S; chats],
            SchedulerKind::Adaptive,
            10 * chats as u32,
            t0,
        )
        .coalescing(coalesce);
        let mut starts = vec![Vec::new(); chats];
        let mut wakes = Vec::new();
        let mut running: Vec<(Instant, usize)> = Vec::new();
        let mut now = t0;
        while now < t0 + S * secs {
            let mut polled = false;
            while let Some(i) = s.pop_due(now) {
                starts[i].push(now);
                running.push((now + Duration::from_millis(20), i));
                polled = true;
            }
            if polled && now >= t0 + 2 * S {
                wakes.push(now);
            }
            running.sort();
            let next_done = running.first().map(|r| r.0);
            let next = match (s.next_at(), next_done) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap(),
            };
            now = next.max(now);
            while running.first().is_some_and(|r| r.0 <= now) {
                let (_, i) = running.remove(0);
                s.finished(i, now, Finished::Ok { inbound: 0 });
            }
        }
        (wakes, starts)
    }

    #[test]
    fn coalescing_polls_chats_in_a_few_bunches_a_second_each_on_its_interval() {
        let (wakes, starts) = wakeups(100, Duration::from_millis(250), 30);
        // At most one bunch per 250 ms step (a chat's interval minus its slack spans 4 steps).
        assert!(wakes.len() <= 5 * 28, "{} wake-ups in 28 s", wakes.len());
        for (i, s) in starts.iter().enumerate() {
            assert!(max_gap(&s[1..]) <= S, "chat {i}: {:?}", max_gap(&s[1..]));
            assert!(s.len() >= 30, "chat {i}: {} polls in 30 s", s.len());
        }
        // Without it, every chat has a phase of its own: a wake-up for nearly every poll.
        let (spread, _) = wakeups(100, Duration::ZERO, 30);
        assert!(spread.len() > 90 * 28, "{} wake-ups in 28 s", spread.len());
    }

    #[test]
    fn a_failed_chat_waits_for_its_backoff_and_others_go_on() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[10 * S, 10 * S], SchedulerKind::Adaptive, 5, t0);
        let a = s.pop_due(t0).unwrap();
        let b = s.pop_due(t0).unwrap();
        assert_eq!(s.pop_due(t0), None, "both in flight");
        s.finished(a, t0, Finished::Failed { retry_in: 60 * S });
        s.finished(b, t0, Finished::Ok { inbound: 0 });
        let next = s.next_at().unwrap();
        assert!(next <= t0 + 10 * S);
        assert_eq!(s.pop_due(t0 + 10 * S), Some(b));
        assert_eq!(s.pop_due(t0 + 30 * S), None, "a is backing off");
        assert_eq!(s.pop_due(t0 + 60 * S), Some(a));
    }

    const REFUSED: Finished = Finished::Unauthorized { retry_in: S };

    #[test]
    fn a_probe_whose_chat_a_reload_removed_does_not_stall_the_token_gate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[S; 3], SchedulerKind::RoundRobin, 100, t0);
        let (a, b) = (s.pop_due(t0).unwrap(), s.pop_due(t0).unwrap());
        s.finished(a, t0, REFUSED);
        assert_eq!(s.finished(b, t0, REFUSED), Some(AuthVerdict::TokenRefused));
        let t1 = t0 + AUTH_PAUSE_FIRST;
        let probe = s.pop_due(t1).unwrap();
        // The probing chat is removed while its request is out; its answer arrives later.
        s.retire(probe);
        assert_eq!(s.finished(probe, t1, Finished::Ok { inbound: 0 }), None);
        let next = s.pop_due(t1).expect("another chat probes");
        assert_ne!(next, probe);
        // With one live chat left, the probe asks it even though it was refused last.
        s.finished(next, t1, REFUSED);
        for i in 0..3 {
            if i != next {
                s.retire(i);
            }
        }
        let t2 = t1 + 4 * AUTH_PAUSE_FIRST;
        assert_eq!(s.pop_due(t2), Some(next));
    }

    #[test]
    fn a_chat_added_back_reuses_its_slot_after_its_poll_in_flight() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[S, S], SchedulerKind::RoundRobin, 100, t0);
        let a = s.pop_due(t0).unwrap();
        s.retire(a);
        s.revive(a, S, t0);
        assert!(s.is_live(a));
        let other = s.pop_due(t0).unwrap();
        assert_ne!(other, a);
        assert_eq!(
            s.pop_due(t0),
            None,
            "a is still in flight: not twice at once"
        );
        s.finished(a, t0, Finished::Ok { inbound: 0 });
        assert_eq!(s.pop_due(t0 + S), Some(a));
    }

    #[test]
    fn a_401_from_two_chats_pauses_everyone_and_another_chat_probes_slowly() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[S; 5], SchedulerKind::Adaptive, 100, t0);
        let first = s.pop_due(t0).unwrap();
        let second = s.pop_due(t0).unwrap();
        assert_eq!(s.finished(first, t0, REFUSED), Some(AuthVerdict::ThisChat));
        assert_eq!(s.auth_paused_until(), None, "one chat's 401 pauses nobody");
        assert_eq!(
            s.finished(second, t0, REFUSED),
            Some(AuthVerdict::TokenRefused)
        );
        assert_eq!(s.pop_due(t0 + S), None, "paused");
        assert_eq!(s.auth_paused_until(), Some(t0 + AUTH_PAUSE_FIRST));
        let t1 = t0 + AUTH_PAUSE_FIRST;
        let probe = s.pop_due(t1).unwrap();
        assert_ne!(probe, second, "not the chat refused last");
        assert_eq!(s.pop_due(t1), None, "one probe at a time");
        assert_eq!(s.next_at(), None, "nothing until the probe answers");
        assert_eq!(
            s.finished(probe, t1, REFUSED),
            Some(AuthVerdict::StillRefused)
        );
        assert_eq!(
            s.auth_paused_until(),
            Some(t1 + 2 * AUTH_PAUSE_FIRST),
            "doubled"
        );
        let t2 = t1 + 2 * AUTH_PAUSE_FIRST;
        let next_probe = s.pop_due(t2).unwrap();
        assert_ne!(next_probe, probe, "each probe asks another chat");
        assert_eq!(
            s.finished(next_probe, t2, Finished::Ok { inbound: 0 }),
            None
        );
        assert_eq!(s.auth_paused_until(), None, "the token works again");
        assert!(s.pop_due(t2).is_some());
    }

    #[test]
    fn a_401_only_one_chat_gets_is_that_chats_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[S; 3], SchedulerKind::RoundRobin, 100, t0);
        let (a, b, c) = (
            s.pop_due(t0).unwrap(),
            s.pop_due(t0).unwrap(),
            s.pop_due(t0).unwrap(),
        );
        let refused = Finished::Unauthorized { retry_in: 20 * S };
        assert_eq!(s.finished(a, t0, refused), Some(AuthVerdict::ThisChat));
        s.finished(b, t0, Finished::Ok { inbound: 0 });
        s.finished(c, t0, Finished::Ok { inbound: 0 });
        // Later, the same chat again: still only its own problem (the others were served).
        let t1 = t0 + 20 * S;
        let mut seen = Vec::new();
        while let Some(i) = s.pop_due(t1) {
            seen.push(i);
        }
        assert!(seen.contains(&a));
        assert_eq!(s.finished(a, t1, refused), Some(AuthVerdict::ThisChat));
        for &i in seen.iter().filter(|&&i| i != a) {
            s.finished(i, t1, Finished::Ok { inbound: 0 });
        }
        assert_eq!(s.auth_paused_until(), None, "nobody else paused");
        assert_eq!(
            s.pop_due(t1 + S),
            Some(b.min(c)),
            "the others keep their pace"
        );
    }

    #[test]
    fn with_no_spare_budget_adaptive_is_round_robin() {
        // 100 chats at 10s need 10 polls/s: a budget of 10 leaves nothing spare.
        let starts = simulate(SchedulerKind::Adaptive, 100, &[1, 2], 10 * S, 10, 60);
        assert!(starts[1].len() <= 8, "{}", starts[1].len());
    }

    #[test]
    fn the_spare_budget_reaches_busy_chats_after_a_start_up_burst() {
        // 1,000 chats at 30s need ~34 polls/s of a 50/s budget; 50 chats get a message every
        // 10s. Due times bunched by the start-up burst used to starve the soft polls.
        let t0 = Instant::now();
        let n = 1000;
        let mut s = Schedule::new(&vec![30 * S; n], SchedulerKind::Adaptive, 50, t0);
        let step = S / 47;
        let (mut now, mut last_recompute) = (t0, t0);
        let mut last_poll = vec![t0; n];
        let busy = |i: usize| i.is_multiple_of(20);
        let (mut busy_polls, mut total) = (0, 0);
        let mut gaps_ok = true;
        while now < t0 + 200 * S {
            if now - last_recompute >= S {
                s.recompute(now);
                last_recompute = now;
            }
            if let Some(i) = s.pop_due(now) {
                let since = now - last_poll[i];
                let inbound = if busy(i) {
                    (since.as_secs_f64() / 10.0).round() as usize
                } else {
                    0
                };
                if now > t0 + 100 * S {
                    total += 1;
                    busy_polls += usize::from(busy(i));
                    gaps_ok &= since <= 30 * S;
                }
                last_poll[i] = now;
                s.finished(i, now, Finished::Ok { inbound });
            }
            now += step;
        }
        assert!(gaps_ok, "a chat waited longer than its interval");
        assert!(total <= 100 * 47, "{total}");
        // ~9 spare polls/s over 50 chats: each about every 5.5s, 18 times in 100s.
        assert!(
            busy_polls >= 800,
            "busy chats polled {busy_polls} times in 100s"
        );
    }
}
