//! The compiled world: the chats and their messages at any elapsed time. Pure: takes the
//! elapsed time as input.

use super::*;

/// The mock's clock: a start instant and its unix time; everything else is an offset from it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) start: Instant,
    pub(super) start_unix_ms: i64,
}

impl Clock {
    pub(super) fn now() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: Instant::now(),
            start_unix_ms: i64::try_from(unix.as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub(super) fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Timestamp (unix seconds) of a message at `at_ms` after a start at `start_unix_ms`.
pub(super) fn timestamp_of(start_unix_ms: i64, at_ms: i64) -> i64 {
    start_unix_ms.div_euclid(1000) + at_ms.div_euclid(1000)
}

/// The served form of a chat id: a bare number gets `@c.us`, a full id is used as is.
pub(super) fn served_id(requested: &str) -> String {
    if requested.contains('@') {
        requested.to_owned()
    } else {
        format!("{requested}@c.us")
    }
}

/// Refuses what is neither a bare phone number nor `user@server`, with a hint.
pub(super) fn check_chat_id(id: &str) -> Result<(), String> {
    let (user, server) = id.split_once('@').unwrap_or((id, ""));
    let bare = !id.contains('@');
    if user.is_empty() || (!bare && server.is_empty()) {
        return Err(format!(
            "`{id}` is not a chat id: write 966500000000 or 966500000000@c.us"
        ));
    }
    if bare && !user.bytes().all(|b| b.is_ascii_digit()) {
        let digits: String = user.chars().filter(char::is_ascii_digit).collect();
        let hint = digits.trim_start_matches('0');
        return Err(format!(
            "`{id}` is not a chat id: a phone number is digits with the country code and no + or 00 \
             (did you mean {hint}?)"
        ));
    }
    Ok(())
}

/// A stored (scenario or pushed) message.
#[derive(Debug, Clone)]
pub(super) struct StoredMsg {
    pub(super) at_ms: i64,
    pub(super) id: String,
    pub(super) from_me: bool,
    pub(super) kind: String,
    pub(super) body: String,
    pub(super) author: Option<String>,
    pub(super) revoke_at_ms: Option<i64>,
    pub(super) edit: Option<(i64, String)>,
}

impl StoredMsg {
    pub(super) fn view(&self, now_ms: i64) -> View {
        let revoked = self.revoke_at_ms.is_some_and(|r| now_ms >= r);
        let edit = self.edit.as_ref().filter(|(at, _)| now_ms >= *at);
        let (kind, body) = if revoked {
            ("revoked".to_owned(), None)
        } else {
            let body = edit.map_or(&self.body, |(_, b)| b);
            (self.kind.clone(), Some(body.clone()))
        };
        View {
            id: self.id.clone(),
            from_me: self.from_me,
            kind,
            body,
            at_ms: self.at_ms,
            author: self.author.clone(),
            edited_at_ms: if revoked {
                None
            } else {
                edit.map(|(at, _)| *at)
            },
        }
    }
}

/// A message as served at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct View {
    pub(super) id: String,
    pub(super) from_me: bool,
    pub(super) kind: String,
    /// `None`: revoked.
    pub(super) body: Option<String>,
    pub(super) at_ms: i64,
    pub(super) author: Option<String>,
    pub(super) edited_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub(super) struct ChatState {
    /// Served id (`…@c.us`).
    pub(super) id: String,
    pub(super) name: String,
    pub(super) is_group: bool,
    pub(super) unread_count: i64,
    /// Sorted by `at_ms`, stable (scenario order, then push order).
    pub(super) messages: Vec<StoredMsg>,
    /// Prefix of generated ids (`MOCK{run}_3_` or `MOCKS{run}_17_P`).
    pub(super) id_prefix: String,
    /// Next generated id number.
    pub(super) next_generated: usize,
}

impl ChatState {
    pub(super) fn newest_visible(&self, now_ms: i64, limit: Option<u64>) -> Vec<View> {
        let visible = self.messages.partition_point(|m| m.at_ms <= now_ms);
        let from = limit.map_or(0, |l| {
            visible.saturating_sub(usize::try_from(l).unwrap_or(usize::MAX))
        });
        self.messages[from..visible]
            .iter()
            .map(|m| m.view(now_ms))
            .collect()
    }

    pub(super) fn push(&mut self, msg: NewMessage, now_ms: i64) -> Result<String, PushError> {
        if msg.author.is_some() && !self.is_group {
            return Err(PushError::Invalid(
                "`author` is only for group chats".to_owned(),
            ));
        }
        let id = match msg.id {
            Some(id) if id.is_empty() => {
                return Err(PushError::Invalid("`id` must not be empty".to_owned()));
            }
            Some(id) if self.messages.iter().any(|m| m.id == id) => {
                return Err(PushError::DuplicateId(id));
            }
            Some(id) => id,
            None => loop {
                let candidate = format!("{}{}", self.id_prefix, self.next_generated);
                self.next_generated += 1;
                if !self.messages.iter().any(|m| m.id == candidate) {
                    break candidate;
                }
            },
        };
        let at = self.messages.partition_point(|m| m.at_ms <= now_ms);
        self.messages.insert(
            at,
            StoredMsg {
                at_ms: now_ms,
                id: id.clone(),
                from_me: msg.from_me,
                kind: msg.kind,
                body: msg.body,
                author: msg.author,
                revoke_at_ms: None,
                edit: None,
            },
        );
        Ok(id)
    }
}

/// Synthetic traffic, compiled: message `k` of active chat `c` lies in period `k` of that chat
/// (`[k·P, (k+1)·P)` µs after the traffic start), at a jitter derived from `(seed, c, k)`.
#[derive(Debug, Clone)]
pub(super) struct Synthetic {
    pub(super) chats: u64,
    pub(super) active: u64,
    /// Per-chat period in µs; `None`: no traffic.
    pub(super) period_us: Option<u64>,
    pub(super) keyword: String,
    pub(super) every: u64,
    pub(super) seed: u64,
    pub(super) after_ms: i64,
    pub(super) until_ms: Option<i64>,
    pub(super) filler: Vec<&'static str>,
    /// This run's tag in generated ids ([`run_tag`]).
    pub(super) run: String,
}

/// A tag that makes this run's generated message ids its own: six characters of [A-Z0-9],
/// random per start. Without it, `MOCK0_4` of one run and `MOCK0_4` of the next — two
/// different messages — would share a delivery id in a state file that outlives the run.
pub(super) fn run_tag() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// splitmix64: a stable, portable mix (rand's generators may change across versions).
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn hash3(seed: u64, c: u64, k: u64, salt: u64) -> u64 {
    mix(mix(mix(seed ^ salt) ^ c) ^ k)
}

impl Synthetic {
    pub(super) fn compile(spec: &SyntheticSpec, run: &str) -> Result<Synthetic, String> {
        if spec.chats == 0 || spec.chats > SYNTHETIC_MAX_CHATS {
            return Err(format!(
                "synthetic.chats must be between 1 and {SYNTHETIC_MAX_CHATS}"
            ));
        }
        if !(0.0..=1.0).contains(&spec.active_fraction) {
            return Err("synthetic.active_fraction must be between 0 and 1".to_owned());
        }
        if !spec.messages_per_second.is_finite() || spec.messages_per_second < 0.0 {
            return Err("synthetic.messages_per_second must be a number ≥ 0".to_owned());
        }
        if spec.keyword.trim().is_empty() {
            return Err("synthetic.keyword must not be empty".to_owned());
        }
        if spec.keyword_every == 0 {
            return Err("synthetic.keyword_every must be at least 1".to_owned());
        }
        let after_ms = spec.after.map_or(0, |d| millis(d.0));
        let until_ms = spec.until.map(|d| millis(d.0));
        if until_ms.is_some_and(|u| u <= after_ms) {
            return Err("synthetic.until must be later than synthetic.after".to_owned());
        }
        let keyword_lower = spec.keyword.to_lowercase();
        let filler: Vec<&'static str> = FILLER
            .iter()
            .copied()
            .filter(|f| !f.to_lowercase().contains(&keyword_lower))
            .collect();
        if filler.is_empty() {
            return Err("synthetic.keyword occurs in every filler text; choose another".to_owned());
        }
        // `as` on purpose: chats ≤ 10^8 is exact in f64, and the product is rounded.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let active = {
            let a = (spec.chats as f64 * spec.active_fraction).round() as u64;
            if spec.active_fraction > 0.0 {
                a.clamp(1, spec.chats)
            } else {
                0
            }
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let period_us = (active > 0 && spec.messages_per_second > 0.0)
            .then(|| ((active as f64 * 1e6 / spec.messages_per_second).round() as u64).max(1));
        Ok(Synthetic {
            chats: spec.chats,
            active,
            period_us,
            keyword: spec.keyword.clone(),
            every: spec.keyword_every,
            seed: spec.seed,
            after_ms,
            until_ms,
            filler,
            run: run.to_owned(),
        })
    }

    /// The index of a served synthetic chat id, if it is one.
    pub(super) fn index_of(&self, served: &str) -> Option<u64> {
        let digits = served.strip_suffix("@c.us")?.strip_prefix("9665")?;
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let index = n.checked_sub(SYNTHETIC_BASE)?;
        (index < self.chats).then_some(index)
    }

    /// Whether chat `c` gets traffic: exactly `active` chats, evenly spread.
    pub(super) fn is_active(&self, c: u64) -> bool {
        let (a, n) = (u128::from(self.active), u128::from(self.chats));
        let c = u128::from(c);
        (c + 1) * a / n > c * a / n
    }

    /// Offset of message `k` of chat `c` from the traffic start, in µs.
    pub(super) fn offset_us(&self, period: u64, c: u64, k: u64) -> u64 {
        k.saturating_mul(period)
            .saturating_add(hash3(self.seed, c, k, 1) % period)
    }

    /// How many messages of chat `c` are visible at `now_ms`: O(1).
    pub(super) fn visible_count(&self, c: u64, now_ms: i64) -> u64 {
        let Some(period) = self.period_us else {
            return 0;
        };
        if !self.is_active(c) {
            return 0;
        }
        let mut horizon_us = (i128::from(now_ms) - i128::from(self.after_ms)) * 1000;
        if let Some(until) = self.until_ms {
            horizon_us = horizon_us.min((i128::from(until) - i128::from(self.after_ms)) * 1000 - 1);
        }
        let Ok(x) = u64::try_from(horizon_us) else {
            return 0;
        };
        let q = x / period;
        let q_visible = self.offset_us(period, c, q) <= x;
        q + u64::from(q_visible)
    }

    pub(super) fn is_planted(&self, k: u64) -> bool {
        k % self.every == self.every - 1
    }

    /// Message `k` of chat `c`, derived from `(seed, c, k)`.
    pub(super) fn message(&self, c: u64, k: u64) -> View {
        let period = self.period_us.unwrap_or(1);
        let at_ms =
            self.after_ms + i64::try_from(self.offset_us(period, c, k) / 1000).unwrap_or(i64::MAX);
        let h = hash3(self.seed, c, k, 2);
        let pick = |salt: u64| {
            let n = self.filler.len() as u64;
            self.filler[usize::try_from(mix(h ^ salt) % n).unwrap_or(0)]
        };
        let planted = self.is_planted(k);
        let body = if planted {
            format!("{} {} {}", pick(1), self.keyword, pick(2))
        } else if h.is_multiple_of(3) {
            format!("{} {}", pick(1), pick(2))
        } else {
            pick(1).to_owned()
        };
        View {
            id: format!("MOCKS{}_{c}_{k}", self.run),
            from_me: !planted && h.is_multiple_of(5),
            kind: "chat".to_owned(),
            body: Some(body),
            at_ms,
            author: None,
            edited_at_ms: None,
        }
    }

    /// The newest `limit` visible messages of chat `c`, oldest first: O(limit).
    pub(super) fn newest_visible(&self, c: u64, now_ms: i64, limit: Option<u64>) -> Vec<View> {
        let n = self.visible_count(c, now_ms);
        let from = limit.map_or(0, |l| n.saturating_sub(l));
        (from..n).map(|k| self.message(c, k)).collect()
    }
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Everything the mock serves, compiled from a [`Scenario`]; time is an argument.
#[derive(Debug, Clone)]
pub(super) struct World {
    pub(super) chats: Vec<ChatState>,
    pub(super) by_id: HashMap<String, usize>,
    pub(super) synthetic: Option<Synthetic>,
    /// Messages pushed into synthetic chats, by chat index.
    pub(super) synthetic_pushed: HashMap<u64, ChatState>,
    /// This run's tag in generated message ids ([`run_tag`]).
    pub(super) run: String,
}

/// A chat resolved from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChatRef {
    Listed(usize),
    Synthetic(u64),
}

impl World {
    pub(super) fn compile(scenario: &Scenario) -> Result<World, String> {
        World::compile_with_run(scenario, run_tag())
    }

    /// As [`World::compile`], with generated message ids tagged `run` (fixed for reproducible
    /// output, random per start otherwise).
    pub(super) fn compile_with_run(scenario: &Scenario, run: String) -> Result<World, String> {
        if scenario.token.trim().is_empty() {
            return Err("token must not be empty".to_owned());
        }
        let synthetic = scenario
            .synthetic
            .as_ref()
            .map(|spec| Synthetic::compile(spec, &run))
            .transpose()?;
        let mut chats = Vec::with_capacity(scenario.chats.len());
        let mut by_id = HashMap::new();
        for (ci, spec) in scenario.chats.iter().enumerate() {
            let at = |what: String| format!("chats[{ci}]: {what}");
            check_chat_id(&spec.id).map_err(at)?;
            let id = served_id(&spec.id);
            if by_id.insert(id.clone(), ci).is_some() {
                return Err(at(format!("chat `{id}` is listed twice")));
            }
            if synthetic
                .as_ref()
                .is_some_and(|s| s.index_of(&id).is_some())
            {
                return Err(at(format!("chat `{id}` is also a synthetic chat")));
            }
            let is_group = spec.is_group.unwrap_or_else(|| id.ends_with("@g.us"));
            let user = id.split_once('@').map_or(id.as_str(), |(u, _)| u);
            let mut messages = Vec::with_capacity(spec.messages.len());
            let mut ids = HashSet::new();
            for (mi, m) in spec.messages.iter().enumerate() {
                let at = |what: String| format!("chats[{ci}].messages[{mi}]: {what}");
                let id =
                    m.id.clone()
                        .unwrap_or_else(|| format!("MOCK{run}_{ci}_{mi}"));
                if id.is_empty() {
                    return Err(at("`id` must not be empty".to_owned()));
                }
                if !ids.insert(id.clone()) {
                    return Err(at(format!("message id `{id}` is used twice in this chat")));
                }
                if m.kind.is_empty() {
                    return Err(at("`type` must not be empty".to_owned()));
                }
                if m.author.is_some() && !is_group {
                    return Err(at("`author` is only for group chats".to_owned()));
                }
                if m.revoke_at.is_some_and(|r| r < m.at) {
                    return Err(at("`revoke_at` is before `at`".to_owned()));
                }
                if m.edit.as_ref().is_some_and(|e| e.at < m.at) {
                    return Err(at("`edit.at` is before `at`".to_owned()));
                }
                messages.push(StoredMsg {
                    at_ms: m.at.as_millis(),
                    id,
                    from_me: m.from_me,
                    kind: m.kind.clone(),
                    body: m.body.clone(),
                    author: m.author.clone(),
                    revoke_at_ms: m.revoke_at.map(Offset::as_millis),
                    edit: m.edit.as_ref().map(|e| (e.at.as_millis(), e.body.clone())),
                });
            }
            messages.sort_by_key(|m| m.at_ms);
            chats.push(ChatState {
                name: spec.name.clone().unwrap_or_else(|| user.to_owned()),
                id,
                is_group,
                unread_count: spec.unread_count,
                next_generated: messages.len(),
                messages,
                id_prefix: format!("MOCK{run}_{ci}_"),
            });
        }
        for (fi, f) in scenario.faults.iter().enumerate() {
            Fault::compile(f).map_err(|e| format!("faults[{fi}]: {e}"))?;
        }
        Ok(World {
            chats,
            by_id,
            synthetic,
            synthetic_pushed: HashMap::new(),
            run,
        })
    }

    pub(super) fn resolve(&self, requested: &str) -> Option<ChatRef> {
        let id = served_id(requested);
        if let Some(&i) = self.by_id.get(&id) {
            return Some(ChatRef::Listed(i));
        }
        self.synthetic
            .as_ref()?
            .index_of(&id)
            .map(ChatRef::Synthetic)
    }

    /// The `/chats` reply for a chat at `now_ms`, serialized; `None`: unknown chat.
    pub(super) fn reply(
        &self,
        requested: &str,
        limit: Option<u64>,
        now_ms: i64,
        start_unix_ms: i64,
    ) -> Option<String> {
        let (chat, views) = match self.resolve(requested)? {
            ChatRef::Listed(i) => {
                let chat = &self.chats[i];
                (ChatInfo::of(chat), chat.newest_visible(now_ms, limit))
            }
            ChatRef::Synthetic(c) => {
                let synthetic = self.synthetic.as_ref()?;
                let id = format!("{}@c.us", synthetic_chat_id(c));
                let mut views = synthetic.newest_visible(c, now_ms, limit);
                if let Some(pushed) = self.synthetic_pushed.get(&c) {
                    views.extend(pushed.newest_visible(now_ms, limit));
                    views.sort_by_key(|v| v.at_ms);
                    if let Some(l) = limit {
                        let excess = views
                            .len()
                            .saturating_sub(usize::try_from(l).unwrap_or(usize::MAX));
                        views.drain(..excess);
                    }
                }
                let info = ChatInfo {
                    name: format!("Synthetic {c}"),
                    id,
                    is_group: false,
                    unread_count: 0,
                };
                (info, views)
            }
        };
        Some(render_reply(&chat, &views, start_unix_ms))
    }

    pub(super) fn push(
        &mut self,
        requested: &str,
        msg: NewMessage,
        now_ms: i64,
    ) -> Result<(String, String, bool), PushError> {
        match self.resolve(requested) {
            None => Err(PushError::UnknownChat(requested.to_owned())),
            Some(ChatRef::Listed(i)) => {
                let chat = &mut self.chats[i];
                let id = chat.push(msg, now_ms)?;
                Ok((chat.id.clone(), id, chat.is_group))
            }
            Some(ChatRef::Synthetic(c)) => {
                let served = format!("{}@c.us", synthetic_chat_id(c));
                let chat = self.synthetic_pushed.entry(c).or_insert_with(|| ChatState {
                    id: served.clone(),
                    name: format!("Synthetic {c}"),
                    is_group: false,
                    unread_count: 0,
                    messages: Vec::new(),
                    id_prefix: format!("MOCKS{}_{c}_P", self.run),
                    next_generated: 0,
                });
                let id = chat.push(msg, now_ms)?;
                Ok((served, id, false))
            }
        }
    }

    /// Every planted synthetic message visible at `now_ms`, by chat then time.
    pub(super) fn planted(&self, now_ms: i64, start_unix_ms: i64) -> Vec<PlantedMessage> {
        let Some(s) = &self.synthetic else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in 0..s.chats {
            let n = s.visible_count(c, now_ms);
            if n < s.every {
                continue;
            }
            let chat = format!("{}@c.us", synthetic_chat_id(c));
            let mut k = s.every - 1;
            while k < n {
                let m = s.message(c, k);
                out.push(PlantedMessage {
                    message_id: format!("false_{chat}_{}", m.id),
                    chat: chat.clone(),
                    timestamp: timestamp_of(start_unix_ms, m.at_ms),
                    at_unix_ms: start_unix_ms + m.at_ms,
                });
                k += s.every;
            }
        }
        out
    }
}
