//! Every real payload in tests/data/fixtures parses (the degraded one as a counted skip).

use cartat_rules::gateway::model::{ChatId, parse_reply};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures")
}

fn parse(name: &str) -> cartat_rules::gateway::model::Page {
    let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
    parse_reply(&bytes, &ChatId::from_gateway("unknown")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_fixture_parses_without_losing_a_good_message() {
    let mut files: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 12, "all twelve shared fixtures are here");
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let total = raw["messages"].as_array().unwrap().len();
        let page = parse(&name);
        let skipped = usize::from(name.starts_with("11_"));
        assert_eq!(page.skipped.len(), skipped, "{name}: {:?}", page.skipped);
        assert_eq!(page.messages.len(), total - skipped, "{name}");
        for m in &page.messages {
            assert!(
                m.timestamp > 1_262_304_000 && m.timestamp < 4_102_444_800,
                "{name}: {}",
                m.timestamp
            );
            assert!(!m.key.id.is_empty(), "{name}");
        }
    }
}

#[test]
fn fixture_quirks_are_handled() {
    let p = parse("12_constructed_arabic_seed_quirks_revoked_reaction.json");
    assert_eq!(
        p.messages[0].timestamp, 1_691_347_263,
        "11-digit timestamp falls back to _data.t"
    );
    assert_eq!(p.messages[1].body, "بُوت؟ ابـي اكلـم موظف");
    assert_eq!(p.messages[2].kind, "revoked");
    assert_eq!(p.messages[2].body, "");
    assert_eq!(p.chat.unread_count, Some(3));

    let img = parse("06_image_no_caption_thumbnail_body.json");
    assert_eq!(img.messages[0].kind, "image");
    assert_eq!(
        img.messages[0].body, "",
        "rule text is the top-level body, never _data.body's thumbnail"
    );
    assert!(img.messages[0].has_media || img.messages[0].kind == "image");

    let lid = parse("03_private_lid_masked_ids.json");
    assert!(lid.chat.id.ends_with("@lid"));

    let group = parse("04_group_lid_author.json");
    assert!(group.chat.is_group);
    assert!(
        group.messages[0]
            .author
            .as_deref()
            .unwrap()
            .ends_with("@lid")
    );

    let gp2 = parse("05_group_gp2_ms_creation_missing_readonly.json");
    assert_eq!(gp2.messages[0].kind, "gp2");

    let e2e = parse("08_e2e_notification_no_body.json");
    assert_eq!(e2e.messages[0].kind, "e2e_notification");
    assert_eq!(e2e.messages[0].body, "");

    let poll = parse("09_poll_creation_group_masked_ids.json");
    assert_eq!(poll.messages[0].body, "Winter or Summer?");

    let device = parse("10_device_suffix_author_inconsistent_ids.json");
    assert_eq!(
        device.messages[0].author.as_deref(),
        Some("5513900000000:2@c.us")
    );

    let out = parse("02_wwebjs_message_id_out_suffix.json");
    assert!(out.messages[0].key.from_me);

    let degraded = parse("11_ultramsg_degraded_message.json");
    assert!(
        degraded.skipped[0].reason.contains("id"),
        "{:?}",
        degraded.skipped
    );
}

#[test]
fn the_copies_match_the_shared_fixtures() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/real");
    if !shared.is_dir() {
        return; // shared/ sits beside the project in CI and on developer machines; nothing to compare elsewhere.
    }
    for e in std::fs::read_dir(&shared).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let ours = fixture_dir().join(p.file_name().unwrap());
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&ours).unwrap_or_default(),
                "{} differs from shared/",
                ours.display()
            );
        }
    }
}
