//! One rhai rule-file evaluation per message (issue: rules that remember).
//! Run: `cargo bench --bench scripts`.

use cartat_rules::rules::rhai_file::Host;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;
use std::path::Path;

fn rule_file(c: &mut Criterion) {
    let host = Host::default();
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/escalation.rhai"),
    )
    .unwrap();
    let rule = host
        .compile(Path::new("rules/escalation.rhai"), &src)
        .unwrap();
    let chat = json!({"id": "966500000000@c.us", "name": "Customer", "is_group": false, "unread_count": 1});
    let plain = json!({"body": "السلام عليكم، عندي سؤال عن الطلب", "type": "chat", "from_me": false, "timestamp": 1_700_000_000, "id": "false_x_A"});
    let urgent = json!({"body": "urgent: where is my order?", "type": "chat", "from_me": false, "timestamp": 1_700_000_000, "id": "false_x_B"});
    let empty = serde_json::Map::new();
    let mut state = serde_json::Map::new();
    state.insert("pending".into(), json!(1));
    let mut g = c.benchmark_group("rhai rule file");
    g.bench_function("on_message, no match", |b| {
        b.iter(|| black_box(host.on_message(&rule, plain.clone(), chat.clone(), &empty)))
    });
    g.bench_function("on_message, escalates (webhook + log + state)", |b| {
        b.iter(|| black_box(host.on_message(&rule, urgent.clone(), chat.clone(), &state)))
    });
    g.finish();
}

criterion_group!(benches, rule_file);
criterion_main!(benches);
