//! The wire shape of a `/chats/{id}` reply, read in one streaming pass.
//!
//! Typed visitors pick the few fields a rule can read and skip everything else (`_data`'s
//! dozens of keys, media thumbnails, link previews) without building a JSON tree; strings are
//! borrowed from the reply wherever they hold no escape. Every field is lenient: a value of the
//! wrong type reads as absent, so one odd field never fails a message, and a message that is
//! not an object reads with `is_object: false` so it never fails the page. A key given twice
//! counts once, the last one (as a JSON tree would keep it). Values no field reads are skipped
//! by serde_json without recursion, so no nesting depth can overflow the stack; our own
//! visitors nest at most five deep.
//!
//! Owns: the visitors. Must not: decide what a message means ([`super::model`] does).

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON value as far as a field needs it: scalars kept; null, arrays and objects absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Scalar<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar<'_> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A number (a float truncated), or a string holding an integer.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            Scalar::Float(f) => Some(*f as i64),
            Scalar::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Implements the scalar `visit_*` methods of a visitor whose value is built from a
/// [`Scalar`] by `$wrap` (arrays and objects differ per type).
macro_rules! scalar_visits {
    ($wrap:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Bool(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Int(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(match i64::try_from(v) {
                Ok(i) => Scalar::Int(i),
                Err(_) => Scalar::Float(v as f64),
            }))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Float(v)))
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Str(Cow::Borrowed(v))))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Str(Cow::Owned(v.to_owned()))))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Str(Cow::Owned(v))))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Absent))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap(Scalar::Absent))
        }
    };
}

/// With [`scalar_visits`]: an array is drained and reads as `$wrap(Scalar::Absent)`.
macro_rules! seq_absent {
    ($wrap:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($wrap(Scalar::Absent))
        }
    };
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    scalar_visits!(|s| s);
    seq_absent!(|s| s);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Absent)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// An object key, borrowed from the reply when it has no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads an object's entries: `field` gets each key and reads (or skips) its value.
fn read_object<'de, A: MapAccess<'de>>(
    mut map: A,
    mut field: impl FnMut(&str, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        field(&key, &mut map)?;
    }
    Ok(())
}

/// Skips the value of a key no field reads.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(drop)
}

/// Defines a lenient object type: `$name` reads an object into its fields (each by its own
/// `Deserialize`) and anything else as `$name::default()` with `is_object: false`.
macro_rules! lenient_object {
    ($(#[$doc:meta])* $name:ident { $($json:literal => $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub(crate) struct $name<'a> {
            /// False when the value was not a JSON object (then every field is absent).
            pub is_object: bool,
            $(pub $field: $ty,)*
        }

        impl<'de> Deserialize<'de> for $name<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("any JSON value")
                    }
                    scalar_visits!(|_: Scalar<'de>| $name::default());
                    seq_absent!(|_: Scalar<'de>| $name::default());
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        let mut out = $name { is_object: true, ..$name::default() };
                        read_object(map, |key, map| {
                            match key {
                                $($json => out.$field = map.next_value()?,)*
                                _ => skip(map)?,
                            }
                            Ok(())
                        })?;
                        Ok(out)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// A JID field: a non-empty string, or an object with `_serialized` (or `user` + `server`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Jid<'a>(pub Option<Cow<'a, str>>);

lenient_object!(
    /// A JID written as an object.
    JidObject {
        "_serialized" => serialized: Scalar<'a>,
        "user" => user: Scalar<'a>,
        "server" => server: Scalar<'a>,
    }
);

impl<'de> Deserialize<'de> for Jid<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read as an object (a string lands in no field): then tell the two apart.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Jid<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JID")
            }
            scalar_visits!(|s: Scalar<'de>| match s {
                Scalar::Str(s) if !s.is_empty() => Jid(Some(s)),
                _ => Jid(None),
            });
            seq_absent!(|_: Scalar<'de>| Jid(None));
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let o = JidObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Jid(match o.serialized {
                    Scalar::Str(s) if !s.is_empty() => Some(s),
                    _ => match (o.user.as_str(), o.server.as_str()) {
                        (Some(u), Some(s)) => Some(Cow::Owned(format!("{u}@{s}"))),
                        _ => None,
                    },
                }))
            }
        }
        d.deserialize_any(V)
    }
}

impl Jid<'_> {
    pub(crate) fn to_owned_string(&self) -> Option<String> {
        self.0.as_deref().map(str::to_string)
    }
}

lenient_object!(
    /// A message's `id` (or `_data.id`).
    WireId {
        "fromMe" => from_me: Scalar<'a>,
        "id" => id: Scalar<'a>,
        "_serialized" => serialized: Scalar<'a>,
        "remote" => remote: Jid<'a>,
    }
);

lenient_object!(
    /// The fields of `_data` that stand in for missing top-level ones.
    WireData {
        "id" => id: WireId<'a>,
        "t" => t: Scalar<'a>,
        "type" => kind: Scalar<'a>,
        "from" => from: Jid<'a>,
        "to" => to: Jid<'a>,
        "author" => author: Jid<'a>,
    }
);

lenient_object!(
    /// One element of `messages`, as far as rules can read it.
    WireMessage {
        "id" => id: WireId<'a>,
        "_data" => data: WireData<'a>,
        "timestamp" => timestamp: Scalar<'a>,
        "type" => kind: Scalar<'a>,
        "body" => body: Scalar<'a>,
        "from" => from: Jid<'a>,
        "to" => to: Jid<'a>,
        "author" => author: Jid<'a>,
        "hasMedia" => has_media: Scalar<'a>,
    }
);

lenient_object!(
    /// The reply's `chat`.
    WireChat {
        "id" => id: Jid<'a>,
        "name" => name: Scalar<'a>,
        "isGroup" => is_group: Scalar<'a>,
        "unreadCount" => unread_count: Scalar<'a>,
        "timestamp" => timestamp: Scalar<'a>,
        "archived" => archived: Scalar<'a>,
        "pinned" => pinned: Scalar<'a>,
        "isMuted" => is_muted: Scalar<'a>,
    }
);

/// The reply's `messages`: `None` unless it is an array.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WireMessages<'a>(pub Option<Vec<WireMessage<'a>>>);

impl<'de> Deserialize<'de> for WireMessages<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireMessages<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(m) = seq.next_element::<WireMessage<'de>>()? {
                    out.push(m);
                }
                Ok(WireMessages(Some(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(WireMessages(None))
            }
            scalar_visits!(|_: Scalar<'de>| WireMessages(None));
        }
        d.deserialize_any(V)
    }
}

lenient_object!(
    /// A whole reply.
    WireReply {
        "status" => status: Scalar<'a>,
        "message" => message: Scalar<'a>,
        "chat" => chat: WireChat<'a>,
        "messages" => messages: WireMessages<'a>,
    }
);

/// An array's elements as raw JSON; any other value reads as `None`.
pub(crate) struct RawArray<'a>(pub Option<Vec<&'a RawValue>>);

impl<'de> Deserialize<'de> for RawArray<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawArray<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                    out.push(raw);
                }
                Ok(RawArray(Some(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawArray(None))
            }
            scalar_visits!(|_: Scalar<'de>| RawArray(None));
        }
        d.deserialize_any(V)
    }
}

/// The elements of a reply's one top-level `messages` array, as raw JSON (each exactly the
/// bytes of the reply); `None` when the reply is not an object, has no such array, or has
/// the key more than once.
pub(crate) fn top_level_messages(text: &str) -> Option<Vec<&RawValue>> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<&'de RawValue>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a reply object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let (mut found, mut count) = (None, 0);
            read_object(map, |key, map| {
                if key == "messages" {
                    count += 1;
                    found = map.next_value::<RawArray<'de>>()?.0;
                    Ok(())
                } else {
                    skip(map)
                }
            })?;
            Ok(if count == 1 { found } else { None })
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let out = de.deserialize_map(V).ok()?;
    de.end().ok()?;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_wrong_type_read_as_absent_and_the_last_duplicate_wins() {
        let r: WireReply = serde_json::from_str(
            r#"{"status":"success","chat":[1,{"a":2}],"messages":[
                 7, "x", null, [1], {"body": {"nested": [1, 2]}, "type": 3, "hasMedia": "yes"},
                 {"body": "one", "body": "two", "id": {"fromMe": false, "id": "A", "remote": {"user": "9665", "server": "c.us"}}}
               ]}"#,
        )
        .unwrap();
        assert_eq!(r.status.as_str(), Some("success"));
        assert!(!r.chat.is_object);
        let msgs = r.messages.0.unwrap();
        assert_eq!(msgs.len(), 6);
        assert!(msgs[..4].iter().all(|m| !m.is_object));
        assert!(msgs[4].is_object);
        assert_eq!(msgs[4].body, Scalar::Absent);
        assert_eq!(msgs[4].kind, Scalar::Int(3));
        assert_eq!(msgs[5].body.as_str(), Some("two"));
        assert_eq!(msgs[5].id.remote.0.as_deref(), Some("9665@c.us"));
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_owned() {
        let text = r#"{"messages":[{"body":"بوت","type":"a\nb"}]}"#;
        let r: WireReply = serde_json::from_str(text).unwrap();
        let m = &r.messages.0.unwrap()[0];
        assert!(matches!(&m.body, Scalar::Str(Cow::Borrowed("بوت"))));
        assert!(matches!(&m.kind, Scalar::Str(Cow::Owned(s)) if s == "a\nb"));
    }

    #[test]
    fn numbers_read_as_serde_json_would() {
        let r: WireMessage = serde_json::from_str(
            r#"{"timestamp": 18446744073709551615, "_data": {"t": 1700000000.9}}"#,
        )
        .unwrap();
        assert_eq!(r.timestamp.as_i64(), Some(i64::MAX));
        assert_eq!(r.data.t.as_i64(), Some(1_700_000_000));
        let s: Scalar = serde_json::from_str(r#"" 42 ""#).unwrap();
        assert_eq!(s.as_i64(), Some(42));
    }

    #[test]
    fn deep_nesting_in_a_skipped_field_is_skipped_without_recursion() {
        let text = format!(
            r#"{{"messages":[{{"_data":{{"x":{}1{}}},"body":"b"}}]}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        let r = serde_json::from_str::<WireReply>(&text).unwrap();
        assert_eq!(r.messages.0.unwrap()[0].body.as_str(), Some("b"));
    }
}
