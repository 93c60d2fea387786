//! Publish request bodies: parsed once, borrowed from the body (no copy of `data`, which stays
//! the publisher's JSON byte for byte), validated with messages that name the field.
//!
//! A message object is read leniently — every field as raw JSON — and judged afterwards, so in a
//! batch one malformed entry (a string priority, a missing kind, even a number instead of an
//! object) becomes that entry's error and the others still go out.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use roomcast_proto::ids::is_valid_id;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::merge::{sum_amounts, Amount, MergeOp, MergeRule, MAX_INTERVAL_MS, MAX_SUM_FIELDS};
use crate::router::TargetRef;

/// Longest accepted `kind`, in bytes.
pub const MAX_KIND_LEN: usize = 64;

/// One message object as received: each known field as raw JSON, judged by [`RawMessage::check`].
#[derive(Debug, Default)]
pub struct RawMessage<'a> {
    room: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    broadcast: Option<&'a RawValue>,
    priority: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    merge: Option<&'a RawValue>,
    ack: Option<&'a RawValue>,
    /// Set when the value was not a JSON object at all.
    not_object: bool,
    /// The first unknown or repeated field, reported as an error.
    stray: Option<(StrayKind, String)>,
}

#[derive(Debug, Clone, Copy)]
enum StrayKind {
    Unknown,
    Duplicate,
}

/// A valid message; `data` borrows the body.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub target: TargetRef<'a>,
    pub priority: u8,
    pub kind: Cow<'a, str>,
    pub data: &'a RawValue,
    /// The idempotency id: a repeat on the same channel within the dedupe window is not
    /// published again.
    pub id: Option<&'a str>,
    /// The merge rule, and for `sum` the amounts of its fields in `data`.
    pub merge: Option<(MergeRule, Vec<Amount>)>,
    /// Viewers are asked to acknowledge it (user messages only).
    pub ack: bool,
}

/// Where the target comes from.
#[derive(Debug, Clone, Copy)]
pub enum Context<'a> {
    /// A batch entry: exactly one of `room`, `user`, `broadcast: true`.
    Batch,
    /// A single-message route: the target is in the URL; target fields are refused.
    Url(TargetRef<'a>),
}

/// The body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    #[serde(borrow)]
    pub messages: Vec<RawMessage<'a>>,
}

impl<'a> RawMessage<'a> {
    /// Validates the message; the error names the field at fault.
    pub fn check(&self, context: Context<'a>) -> Result<Message<'a>, String> {
        if self.not_object {
            return Err("a message must be a JSON object".into());
        }
        if let Some((kind, name)) = &self.stray {
            return Err(match kind {
                StrayKind::Unknown => format!("unknown field `{name}`"),
                StrayKind::Duplicate => format!("field `{name}` appears twice"),
            });
        }
        let target = match context {
            Context::Url(target) => {
                if self.room.is_some() || self.user.is_some() || self.broadcast.is_some() {
                    return Err(
                        "room, user and broadcast come from the URL; leave them out of the body"
                            .into(),
                    );
                }
                target
            }
            Context::Batch => self.target()?,
        };
        let priority = match self.priority {
            None => return Err("priority is required (0..3)".into()),
            Some(raw) => match raw.get().parse::<u8>() {
                Ok(p) if p <= 3 => p,
                _ => return Err("priority must be 0..3".into()),
            },
        };
        let kind = match self.kind {
            None => return Err("kind is required".into()),
            Some(raw) => json_str(raw).ok_or("kind must be a string")?,
        };
        if !is_valid_kind(&kind) {
            return Err(format!(
                "kind must be 1-{MAX_KIND_LEN} bytes of [A-Za-z0-9_.:-]"
            ));
        }
        let data = self.data.ok_or("data is required (any JSON value)")?;
        let id = self.id.map(|raw| id(raw, "id")).transpose()?;
        let merge = match self.merge {
            None => None,
            Some(raw) => {
                let rule = merge_rule(raw)?;
                let amounts = match &rule.op {
                    MergeOp::Sum(fields) => {
                        sum_amounts(data.get(), fields).map_err(|e| format!("merge: {e}"))?
                    }
                    MergeOp::Latest => Vec::new(),
                };
                Some((rule, amounts))
            }
        };
        let ack = match self.ack.map(|raw| raw.get()) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err("ack must be true or false".into()),
        };
        if ack && !matches!(target, TargetRef::User(_)) {
            return Err("ack (a receipt) is for messages to a user; leave it out here".into());
        }
        if ack && merge.is_some() {
            return Err("ack and merge cannot be combined: a receipt names one message".into());
        }
        Ok(Message {
            target,
            priority,
            kind,
            data,
            id,
            merge,
            ack,
        })
    }

    fn target(&self) -> Result<TargetRef<'a>, String> {
        const EXACTLY_ONE: &str = "a message needs exactly one of room, user, broadcast: true";
        match (self.room, self.user, self.broadcast) {
            (Some(room), None, None) => Ok(TargetRef::Room(id(room, "room")?)),
            (None, Some(user), None) => Ok(TargetRef::User(id(user, "user")?)),
            (None, None, Some(raw)) => {
                if raw.get() == "true" {
                    Ok(TargetRef::Broadcast)
                } else {
                    Err("broadcast must be true".into())
                }
            }
            _ => Err(EXACTLY_ONE.into()),
        }
    }
}

/// A room or user id from raw JSON: a string without escapes (valid ids never need any).
fn id<'a>(raw: &'a RawValue, field: &str) -> Result<&'a str, String> {
    let text = raw.get();
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('\\'));
    match inner {
        Some(id) if is_valid_id(id.as_bytes()) => Ok(id),
        _ => Err(format!(
            "{field} must be a string of 1-128 bytes of [A-Za-z0-9_.:-]"
        )),
    }
}

/// A `merge` object as the API documents it:
/// `{"key":…,"op":"latest"|"sum","fields":[…],"interval_ms":…,"final":…}`; the error names the
/// field at fault.
fn merge_rule(raw: &RawValue) -> Result<MergeRule, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule<'a> {
        #[serde(borrow)]
        key: Option<&'a RawValue>,
        #[serde(borrow)]
        op: Option<&'a RawValue>,
        #[serde(borrow)]
        fields: Option<&'a RawValue>,
        #[serde(borrow)]
        interval_ms: Option<&'a RawValue>,
        #[serde(borrow, rename = "final")]
        is_final: Option<&'a RawValue>,
    }
    let rule: Rule<'_> = serde_json::from_str(raw.get()).map_err(|e| {
        let e = e.to_string();
        match e.strip_prefix("unknown field ") {
            Some(rest) => format!(
                "merge has an unknown field {}",
                rest.split(',').next().unwrap_or(rest)
            ),
            None => "merge must be an object with key and op".to_string(),
        }
    })?;
    let key = id(rule.key.ok_or("merge.key is required")?, "merge.key")?.to_owned();
    let op = match rule.op.map(json_str) {
        None => return Err("merge.op is required (latest or sum)".into()),
        Some(Some(op)) if op == "latest" => MergeOp::Latest,
        Some(Some(op)) if op == "sum" => {
            let fields: Vec<String> = rule
                .fields
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .ok_or("merge.fields is required for sum: a list of data's numeric fields")?;
            if fields.is_empty() || fields.len() > MAX_SUM_FIELDS {
                return Err(format!("merge.fields must list 1-{MAX_SUM_FIELDS} fields"));
            }
            for (i, field) in fields.iter().enumerate() {
                if field.is_empty() || fields[..i].contains(field) {
                    return Err("merge.fields must be distinct non-empty names".into());
                }
            }
            MergeOp::Sum(fields)
        }
        Some(_) => return Err("merge.op must be latest or sum".into()),
    };
    if op == MergeOp::Latest && rule.fields.is_some() {
        return Err("merge.fields is only for op sum".into());
    }
    let interval = match rule.interval_ms {
        None => None,
        Some(raw) => match raw.get().parse::<u64>() {
            Ok(ms) if (1..=MAX_INTERVAL_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => {
                return Err(format!(
                    "merge.interval_ms must be an integer 1-{MAX_INTERVAL_MS}"
                ))
            }
        },
    };
    let is_final = match rule.is_final.map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err("merge.final must be true or false".into()),
    };
    Ok(MergeRule {
        key,
        op,
        interval,
        is_final,
    })
}

/// A JSON string's value, borrowed when it has no escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// `kind` rule: 1..=64 bytes of `[A-Za-z0-9_.:-]` (it is spliced into client JSON unescaped).
pub fn is_valid_kind(kind: &str) -> bool {
    (1..=MAX_KIND_LEN).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Room,
    User,
    Broadcast,
    Priority,
    Kind,
    Data,
    Id,
    Merge,
    Ack,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Room => "room",
            Field::User => "user",
            Field::Broadcast => "broadcast",
            Field::Priority => "priority",
            Field::Kind => "kind",
            Field::Data => "data",
            Field::Id => "id",
            Field::Merge => "merge",
            Field::Ack => "ack",
        }
    }
}

/// A map key: one of the known fields, or an unknown name.
enum Key {
    Known(Field),
    Unknown(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "room" => Key::Known(Field::Room),
                    "user" => Key::Known(Field::User),
                    "broadcast" => Key::Known(Field::Broadcast),
                    "priority" => Key::Known(Field::Priority),
                    "kind" => Key::Known(Field::Kind),
                    "data" => Key::Known(Field::Data),
                    "id" => Key::Known(Field::Id),
                    "merge" => Key::Known(Field::Merge),
                    "ack" => Key::Known(Field::Ack),
                    other => Key::Unknown(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMessage<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawMessage<'a>, D::Error> {
        deserializer.deserialize_any(MessageVisitor(std::marker::PhantomData))
    }
}

struct MessageVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for MessageVisitor<'a> {
    type Value = RawMessage<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<RawMessage<'a>, M::Error> {
        let mut msg = RawMessage::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(field) => {
                    let value: &'de RawValue = map.next_value()?;
                    let slot = match field {
                        Field::Room => &mut msg.room,
                        Field::User => &mut msg.user,
                        Field::Broadcast => &mut msg.broadcast,
                        Field::Priority => &mut msg.priority,
                        Field::Kind => &mut msg.kind,
                        Field::Data => &mut msg.data,
                        Field::Id => &mut msg.id,
                        Field::Merge => &mut msg.merge,
                        Field::Ack => &mut msg.ack,
                    };
                    if slot.replace(value).is_some() && msg.stray.is_none() {
                        msg.stray = Some((StrayKind::Duplicate, field.name().to_owned()));
                    }
                }
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    if msg.stray.is_none() {
                        msg.stray = Some((StrayKind::Unknown, name));
                    }
                }
            }
        }
        Ok(msg)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<RawMessage<'a>, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_object())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawMessage<'a>, E> {
        Ok(not_object())
    }
}

fn not_object<'a>() -> RawMessage<'a> {
    RawMessage {
        not_object: true,
        ..RawMessage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(body: &str) -> Result<(u8, String, String), String> {
        let raw: RawMessage<'_> = serde_json::from_str(body).map_err(|e| e.to_string())?;
        raw.check(Context::Url(TargetRef::Room("r1")))
            .map(|m| (m.priority, m.kind.into_owned(), m.data.get().to_owned()))
    }

    #[test]
    fn accepts_a_valid_message_and_keeps_data_verbatim() {
        let body = r#"{"priority":1,"kind":"gift","data":{ "gift" : "rocket", "n": 3.50 }}"#;
        assert_eq!(
            single(body).unwrap(),
            (
                1,
                "gift".into(),
                r#"{ "gift" : "rocket", "n": 3.50 }"#.into()
            )
        );
        assert_eq!(
            single(r#"{"priority":0,"kind":"a:b.c-d_e","data":null}"#)
                .unwrap()
                .2,
            "null"
        );
        assert_eq!(
            single(r#"{"kind":"\u0067ift","priority":3,"data":"hi"}"#)
                .unwrap()
                .1,
            "gift",
            "escaped kind is decoded"
        );
    }

    #[test]
    fn an_id_is_optional_and_borrowed() {
        let body = r#"{"priority":1,"kind":"gift","data":1,"id":"order-42:gift.7_x"}"#;
        let raw: RawMessage<'_> = serde_json::from_str(body).unwrap();
        let message = raw.check(Context::Url(TargetRef::Room("r1"))).unwrap();
        assert_eq!(message.id, Some("order-42:gift.7_x"));
        let raw: RawMessage<'_> =
            serde_json::from_str(r#"{"priority":1,"kind":"gift","data":1}"#).unwrap();
        assert_eq!(
            raw.check(Context::Batch).unwrap_err(),
            "a message needs exactly one of room, user, broadcast: true"
        );
        let long = format!(
            r#"{{"priority":1,"kind":"k","data":1,"id":"{}"}}"#,
            "i".repeat(129)
        );
        assert!(single(&long).unwrap_err().starts_with("id must be"));
        let max = format!(
            r#"{{"priority":1,"kind":"k","data":1,"id":"{}"}}"#,
            "i".repeat(128)
        );
        assert!(single(&max).is_ok());
    }

    #[test]
    fn names_the_field_at_fault() {
        let cases = [
            (r#"{"kind":"gift","data":1}"#, "priority is required (0..3)"),
            (
                r#"{"priority":4,"kind":"gift","data":1}"#,
                "priority must be 0..3",
            ),
            (
                r#"{"priority":-1,"kind":"gift","data":1}"#,
                "priority must be 0..3",
            ),
            (
                r#"{"priority":"2","kind":"gift","data":1}"#,
                "priority must be 0..3",
            ),
            (
                r#"{"priority":1.0,"kind":"gift","data":1}"#,
                "priority must be 0..3",
            ),
            (r#"{"priority":1,"data":1}"#, "kind is required"),
            (
                r#"{"priority":1,"kind":7,"data":1}"#,
                "kind must be a string",
            ),
            (
                r#"{"priority":1,"kind":"","data":1}"#,
                "kind must be 1-64 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                r#"{"priority":1,"kind":"a b","data":1}"#,
                "kind must be 1-64 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                r#"{"priority":1,"kind":"gift"}"#,
                "data is required (any JSON value)",
            ),
            (
                r#"{"priority":1,"kind":"gift","data":1,"prio":2}"#,
                "unknown field `prio`",
            ),
            (
                r#"{"priority":1,"priority":2,"kind":"gift","data":1}"#,
                "field `priority` appears twice",
            ),
            (
                r#"{"priority":1,"kind":"gift","data":1,"id":""}"#,
                "id must be a string of 1-128 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                r#"{"priority":1,"kind":"gift","data":1,"id":7}"#,
                "id must be a string of 1-128 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                r#"{"priority":1,"kind":"gift","data":1,"id":"a b"}"#,
                "id must be a string of 1-128 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                r#"{"priority":1,"kind":"gift","data":1,"id":"a","id":"b"}"#,
                "field `id` appears twice",
            ),
            (
                r#"{"room":"r2","priority":1,"kind":"gift","data":1}"#,
                "room, user and broadcast come from the URL; leave them out of the body",
            ),
            ("[1,2]", "a message must be a JSON object"),
            ("7", "a message must be a JSON object"),
        ];
        for (body, message) in cases {
            assert_eq!(single(body).unwrap_err(), message, "{body}");
        }
        let long_kind = format!(r#"{{"priority":1,"kind":"{}","data":1}}"#, "k".repeat(65));
        assert!(single(&long_kind).is_err());
    }

    #[test]
    fn merge_rules_are_read_and_checked() {
        let body = r#"{"priority":2,"kind":"combo","data":{"user":"u42","count":3,"v":0.5},
            "merge":{"key":"combo:u42:rocket","op":"sum","fields":["count","v"],"interval_ms":2000}}"#;
        let raw: RawMessage<'_> = serde_json::from_str(body).unwrap();
        let msg = raw.check(Context::Url(TargetRef::Room("r1"))).unwrap();
        let (rule, amounts) = msg.merge.expect("a rule");
        assert_eq!(
            rule,
            MergeRule {
                key: "combo:u42:rocket".into(),
                op: MergeOp::Sum(vec!["count".into(), "v".into()]),
                interval: Some(Duration::from_millis(2000)),
                is_final: false,
            }
        );
        assert_eq!(amounts, [Amount::Int(3), Amount::Float(0.5)]);
        let body = r#"{"priority":1,"kind":"pk","data":{"left":1},"merge":{"key":"pk:7","op":"latest","final":true}}"#;
        let raw: RawMessage<'_> = serde_json::from_str(body).unwrap();
        let (rule, amounts) = raw
            .check(Context::Url(TargetRef::Room("r1")))
            .unwrap()
            .merge
            .unwrap();
        assert_eq!(
            (rule.op, rule.interval, rule.is_final),
            (MergeOp::Latest, None, true)
        );
        assert!(amounts.is_empty());
    }

    #[test]
    fn bad_merge_rules_are_refused_naming_the_field() {
        let with = |data: &str, merge: &str| {
            format!(r#"{{"priority":1,"kind":"k","data":{data},"merge":{merge}}}"#)
        };
        let cases = [
            (
                with("{}", r#"{"key":"k","op":"max"}"#),
                "merge.op must be latest or sum",
            ),
            (
                with("{}", r#"{"key":"k"}"#),
                "merge.op is required (latest or sum)",
            ),
            (
                with("{}", r#"{"key":"k","op":7}"#),
                "merge.op must be latest or sum",
            ),
            (with("{}", r#"{"op":"latest"}"#), "merge.key is required"),
            (
                with("{}", r#"{"key":"a b","op":"latest"}"#),
                "merge.key must be a string of 1-128 bytes of [A-Za-z0-9_.:-]",
            ),
            (
                with(r#"{"n":1}"#, r#"{"key":"k","op":"sum","fields":["count"]}"#),
                "merge: data has no field `count` to sum",
            ),
            (
                with(
                    r#"{"count":"1"}"#,
                    r#"{"key":"k","op":"sum","fields":["count"]}"#,
                ),
                "merge: data.count must be a number to sum",
            ),
            (
                with("[1]", r#"{"key":"k","op":"sum","fields":["count"]}"#),
                "merge: data must be a JSON object for a sum merge",
            ),
            (
                with(r#"{"n":1}"#, r#"{"key":"k","op":"sum"}"#),
                "merge.fields is required for sum: a list of data's numeric fields",
            ),
            (
                with(r#"{"n":1}"#, r#"{"key":"k","op":"sum","fields":[]}"#),
                "merge.fields must list 1-16 fields",
            ),
            (
                with(r#"{"n":1}"#, r#"{"key":"k","op":"sum","fields":["n","n"]}"#),
                "merge.fields must be distinct non-empty names",
            ),
            (
                with("{}", r#"{"key":"k","op":"latest","fields":["n"]}"#),
                "merge.fields is only for op sum",
            ),
            (
                with("{}", r#"{"key":"k","op":"latest","interval_ms":0}"#),
                "merge.interval_ms must be an integer 1-3600000",
            ),
            (
                with("{}", r#"{"key":"k","op":"latest","interval_ms":1.5}"#),
                "merge.interval_ms must be an integer 1-3600000",
            ),
            (
                with("{}", r#"{"key":"k","op":"latest","final":1}"#),
                "merge.final must be true or false",
            ),
            (
                with("{}", r#"{"key":"k","op":"latest","every":1}"#),
                "merge has an unknown field `every`",
            ),
            (with("{}", "[]"), "merge must be an object with key and op"),
        ];
        for (body, message) in cases {
            assert_eq!(single(&body).unwrap_err(), message, "{body}");
        }
    }

    #[test]
    fn batch_entries_fail_one_by_one() {
        let body = r#"{"messages":[
            {"room":"r1","priority":2,"kind":"gift","data":{"n":1}},
            {"user":"u1","priority":9,"kind":"gift","data":1},
            "not an object",
            {"broadcast":true,"priority":0,"kind":"system","data":"bye"},
            {"room":"r 1","priority":2,"kind":"gift","data":1},
            {"room":"r1","user":"u1","priority":2,"kind":"gift","data":1},
            {"broadcast":false,"priority":2,"kind":"gift","data":1},
            {"user":"u2","priority":1,"kind":"notice","data":[1,{"a":"b"}]}
        ]}"#;
        let batch: BatchBody<'_> = serde_json::from_str(body).unwrap();
        let checked: Vec<_> = batch
            .messages
            .iter()
            .map(|m| m.check(Context::Batch))
            .collect();
        assert!(matches!(
            checked[0].as_ref().unwrap().target,
            TargetRef::Room("r1")
        ));
        assert_eq!(checked[1].as_ref().unwrap_err(), "priority must be 0..3");
        assert_eq!(
            checked[2].as_ref().unwrap_err(),
            "a message must be a JSON object"
        );
        assert!(matches!(
            checked[3].as_ref().unwrap().target,
            TargetRef::Broadcast
        ));
        assert!(checked[4].as_ref().unwrap_err().starts_with("room must be"));
        assert!(checked[5]
            .as_ref()
            .unwrap_err()
            .starts_with("a message needs exactly one"));
        assert_eq!(checked[6].as_ref().unwrap_err(), "broadcast must be true");
        let last = checked[7].as_ref().unwrap();
        assert!(matches!(last.target, TargetRef::User("u2")));
        assert_eq!(last.data.get(), r#"[1,{"a":"b"}]"#);
    }

    #[test]
    fn data_borrows_the_body() {
        let body = br#"{"messages":[{"room":"r1","priority":2,"kind":"k","data":{"x":1}}]}"#;
        let batch: BatchBody<'_> = serde_json::from_slice(body).unwrap();
        let message = batch.messages[0].check(Context::Batch).unwrap();
        let range = body.as_ptr_range();
        assert!(
            range.contains(&message.data.get().as_ptr()),
            "data was copied"
        );
    }

    #[test]
    fn batch_body_shape_errors_are_whole_request_errors() {
        assert!(serde_json::from_str::<BatchBody<'_>>(r#"{"msgs":[]}"#).is_err());
        assert!(serde_json::from_str::<BatchBody<'_>>(r#"{"messages":{}}"#).is_err());
        assert!(serde_json::from_str::<BatchBody<'_>>(r#"{"messages":[}"#).is_err());
        assert!(serde_json::from_str::<BatchBody<'_>>(r#"{"messages":[]}"#)
            .unwrap()
            .messages
            .is_empty());
    }
}
