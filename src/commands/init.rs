//! `cartat-rules init`: writes a commented `cartat.yaml` and one example rule into a folder,
//! so a new user starts from a config that `check` passes and that says what each key does.
//! Never overwrites: an existing file is left as it is and named.

use std::path::Path;

/// The commented config `init` writes (secrets from the environment; every path relative to
/// the file).
pub(crate) const CONFIG: &str = r#"# cartat-rules config. Check it with: cartat-rules check -c cartat.yaml
# Paths are relative to this file; ${VAR} is read from the environment and never logged.
api:
  base_url: ${CARTAT_BASE_URL}              # your Cartat gateway, e.g. https://cartat.example.com
  token: ${CARTAT_TOKEN}                    # its API token
  rate_limit: { per_second: 5, burst: 5 }   # every call to the API, all chats together
  message_limit: 50                         # messages asked per poll (more when a chat is busy)
chats:                                      # the chats to watch
  - "966500000000"                          # a phone number: country code, no + or 00
  # - { id: "120363012345678901@g.us", interval: 30s }   # a group, polled every 30 s
# Several WhatsApp numbers: instead of api: and chats:, one entry per number, each with
# its own api: and chats: as above (see the README, "Several WhatsApp numbers"):
# accounts:
#   - { name: sales, api: { base_url: "${CARTAT_BASE_URL}", token: "${SALES_TOKEN}" }, chats: ["966500000000"] }
#   - { name: support, api: { base_url: "${CARTAT_BASE_URL}", token: "${SUPPORT_TOKEN}" }, chats: ["966500000001"] }
poll:
  interval: 10s                             # how often each chat is polled
  on_first_sight: skip_history              # what a chat holds when first seen never fires
state:
  path: ./state/cartat-rules.db             # watermarks and the outbox; keep it on a disk
rules:
  paths: [./rules]                          # rule files: *.yaml, *.yml, *.rhai
webhooks:
  secret: ${WEBHOOK_SECRET}                 # whsec_… : receivers verify the signature with it
  max_attempts: 12                          # retried over ~2 days, then dead-lettered
  # allow_private_networks: [10.0.0.0/8]    # private, loopback and link-local targets are refused unless listed
log:
  mask_phone_numbers: true
server:
  listen: 127.0.0.1:9464                    # /healthz and /metrics ("off" to turn it off)
"#;

/// The example rule `init` writes.
pub(crate) const RULE: &str = r#"# A customer asks for the bot: call the bot's webhook, once per message.
# Matches بوت, بُوت, البـوت, والبوت, "BOT" — not روبوت or "robotics".
# Try it offline: cartat-rules test --rules rules --input saved-chat.json --explain
id: bot-keyword
description: a customer wrote "bot" (Arabic or English)
match:
  from_me: false
  type: [chat]
  body:
    any: ["بوت", "bot"]
    words: true
actions:
  - log: { level: info, message: "{{ rule.id }} in {{ chat.id }}" }
  - webhook:
      url: https://hooks.example.com/whatsapp/bot   # your bot's endpoint
"#;

pub(super) fn init(dir: &Path) -> u8 {
    let files = [
        (dir.join("cartat.yaml"), CONFIG),
        (dir.join("rules").join("bot-keyword.yaml"), RULE),
    ];
    let mut code = 0;
    for (path, text) in &files {
        if path.exists() {
            eprintln!("{} exists: left as it is", path.display());
            continue;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, text));
        match written {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("cartat-rules init: cannot write {}: {e}", path.display());
                code = 1;
            }
        }
    }
    if code == 0 {
        println!(
            "next: set CARTAT_BASE_URL, CARTAT_TOKEN and WEBHOOK_SECRET, list your chats, then\n  cartat-rules check -c {}\n  cartat-rules run -c {}",
            dir.join("cartat.yaml").display(),
            dir.join("cartat.yaml").display()
        );
    }
    code
}
