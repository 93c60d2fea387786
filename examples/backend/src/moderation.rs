//! The moderation rules: a pure function from (settings, mute list, send) to the answer.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use crate::config::Config;
use crate::contract::{Decision, SendRequest};

/// Close code for banned users (roomcast's own codes are 4000, 4001, 4008, 4029).
pub const BANNED_CLOSE_CODE: u16 = 4403;

/// Users muted at run time (seeded from `--muted`, changed by `POST`/`DELETE /mute/{user}`).
#[derive(Debug, Clone, Default)]
pub struct MuteList(HashSet<String>);

impl MuteList {
    pub fn new<'a>(users: impl IntoIterator<Item = &'a str>) -> MuteList {
        MuteList(users.into_iter().map(str::to_owned).collect())
    }

    /// Mutes `user`; false if they already were.
    pub fn mute(&mut self, user: &str) -> bool {
        self.0.insert(user.to_owned())
    }

    /// Unmutes `user`; false if they were not muted.
    pub fn unmute(&mut self, user: &str) -> bool {
        self.0.remove(user)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.0.contains(user)
    }

    /// The muted users, sorted.
    pub fn users(&self) -> BTreeSet<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// Decides what roomcast does with one send. The rules, first match wins:
///
/// 1. banned user → `disconnect` 4403 `banned`;
/// 2. muted user → `reject` `muted`;
/// 3. kind in `--accept-kinds` → `accept`;
/// 4. kind `chat` → `publish`, with banned words masked in the text (`data` a string, or the
///    `text` field of an object) and, when `data` is an object, `level` and `badge` set;
/// 5. any other kind → `publish` unchanged.
pub fn decide(config: &Config, muted: &MuteList, send: &SendRequest) -> Decision {
    if config.banned_users.contains(&send.user) {
        return Decision::Disconnect {
            code: BANNED_CLOSE_CODE,
            reason: "banned".to_owned(),
        };
    }
    if muted.contains(&send.user) {
        return Decision::Reject {
            code: "muted".to_owned(),
            message: "you are muted in this room".to_owned(),
        };
    }
    if config.accept_kinds.contains(&send.kind) {
        return Decision::Accept;
    }
    if send.kind != "chat" {
        return Decision::publish_unchanged();
    }
    match &send.data {
        Value::Object(fields) => {
            let mut fields = fields.clone();
            if let Some(Value::String(text)) = fields.get_mut("text") {
                if let Some(masked) = mask_banned(text, &config.banned_words) {
                    *text = masked;
                }
            }
            enrich(config, &send.user, &mut fields);
            Decision::publish_data(Value::Object(fields))
        }
        Value::String(text) => match mask_banned(text, &config.banned_words) {
            Some(masked) => Decision::publish_data(Value::String(masked)),
            None => Decision::publish_unchanged(),
        },
        _ => Decision::publish_unchanged(),
    }
}

/// `text` with every occurrence of a banned word replaced by as many `*` as it has chars, or
/// `None` if nothing matched. Matching is case-insensitive char by char (so `SPAM`, `Спам` vs
/// `спам`, `ÄRGER` vs `ärger` all match) and is a substring match: `scampi` becomes `****pi`.
pub fn mask_banned(text: &str, words: &[Vec<char>]) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut hit = vec![false; chars.len()];
    for word in words {
        if word.is_empty() || word.len() > chars.len() {
            continue;
        }
        for start in 0..=chars.len() - word.len() {
            let window = &chars[start..start + word.len()];
            if window.iter().zip(word).all(|(&c, &w)| same_folded(c, w)) {
                hit[start..start + word.len()].fill(true);
            }
        }
    }
    if !hit.contains(&true) {
        return None;
    }
    let masked = chars
        .iter()
        .zip(&hit)
        .map(|(&c, &h)| if h { '*' } else { c })
        .collect();
    Some(masked)
}

fn same_folded(a: char, b: char) -> bool {
    a == b || a.to_lowercase().eq(b.to_lowercase())
}

/// Sets the sender's `level` and `badge` (overwriting whatever the viewer put there, so that
/// nobody can claim a badge).
fn enrich(config: &Config, user: &str, fields: &mut Map<String, Value>) {
    let level = level(user);
    fields.insert("level".to_owned(), Value::from(level));
    fields.insert("badge".to_owned(), Value::from(badge(config, user, level)));
}

/// The sender's level, 1..=60, derived from the user id (a stand-in for a user database).
pub fn level(user: &str) -> u64 {
    fnv1a(user.as_bytes()) % 60 + 1
}

/// `vip` for `--vip` users, `fan` from level 30, otherwise empty.
pub fn badge(config: &Config, user: &str, level: u64) -> &'static str {
    if config.vip.contains(user) {
        "vip"
    } else if level >= 30 {
        "fan"
    } else {
        ""
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config {
            banned_words: ["spam", "scam", "спам", "垃圾", "ärger"]
                .iter()
                .map(|w| w.chars().collect())
                .collect(),
            banned_users: HashSet::from(["troll".to_owned()]),
            vip: HashSet::from(["star".to_owned()]),
            accept_kinds: HashSet::from(["like".to_owned()]),
            max_receipts: 10,
        }
    }

    fn send(user: &str, kind: &str, data: Value) -> SendRequest {
        SendRequest {
            user: user.to_owned(),
            room: "r1".to_owned(),
            kind: kind.to_owned(),
            data,
            conn: None,
        }
    }

    fn decide_chat(data: Value) -> Value {
        let decision = decide(&config(), &MuteList::default(), &send("u1", "chat", data));
        serde_json::to_value(decision).unwrap()
    }

    fn mask(text: &str) -> Option<String> {
        mask_banned(text, &config().banned_words)
    }

    #[test]
    fn masks_banned_words_case_insensitively() {
        assert_eq!(
            mask("SPAM and Spam, no sCaM").as_deref(),
            Some("**** and ****, no ****")
        );
        assert_eq!(mask("spamspam").as_deref(), Some("********"));
        assert_eq!(mask("scampi").as_deref(), Some("****pi"));
        assert_eq!(mask("hello 666"), None);
        assert_eq!(mask(""), None);
    }

    #[test]
    fn masks_non_ascii_text_by_chars_not_bytes() {
        assert_eq!(mask("это СПАМ!").as_deref(), Some("это ****!"));
        assert_eq!(mask("这是垃圾信息").as_deref(), Some("这是**信息"));
        assert_eq!(mask("kein ÄRGER 😀").as_deref(), Some("kein ***** 😀"));
        // A non-ASCII neighbour does not shift the match.
        assert_eq!(mask("😀spam😀").as_deref(), Some("😀****😀"));
    }

    #[test]
    fn chat_object_gets_its_text_filtered_and_is_enriched() {
        let answer = decide_chat(json!({"text": "buy SPAM now", "title": "spam", "color": 3}));
        let data = &answer["data"];
        assert_eq!(answer["result"], "publish");
        assert_eq!(data["text"], "buy **** now");
        assert_eq!(data["title"], "spam", "only the text field is filtered");
        assert_eq!(data["color"], 3);
        assert_eq!(data["level"], level("u1"));
        assert!(answer.get("priority").is_none() && answer.get("kind").is_none());
    }

    #[test]
    fn clean_chat_object_is_still_enriched() {
        let answer = decide_chat(json!({"text": "666"}));
        assert_eq!(answer["data"]["text"], "666");
        assert!(answer["data"]["level"].is_u64());
        assert!(answer["data"]["badge"].is_string());
    }

    #[test]
    fn chat_string_is_filtered_but_not_enriched() {
        assert_eq!(
            decide_chat(json!("scam!")),
            json!({"result": "publish", "data": "****!"})
        );
        assert_eq!(decide_chat(json!("hello")), json!({"result": "publish"}));
        assert_eq!(decide_chat(json!(42)), json!({"result": "publish"}));
        assert_eq!(decide_chat(Value::Null), json!({"result": "publish"}));
    }

    #[test]
    fn enrichment_is_deterministic_and_cannot_be_spoofed() {
        for user in ["u1", "u2", "alice", "用户"] {
            let level = level(user);
            assert!((1..=60).contains(&level));
            assert_eq!(level, super::level(user));
            let expected = if level >= 30 { "fan" } else { "" };
            assert_eq!(badge(&config(), user, level), expected);
        }
        // Published FNV-1a 64 test vectors, then "u1": 0x08c47b07b56747f3 % 60 = 47 → level 48.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(level("u1"), 48);
        assert_eq!(badge(&config(), "u1", 48), "fan");
        assert_eq!(level("u42"), 3);
        assert_eq!(badge(&config(), "u42", 3), "");
        let answer = decide_chat(json!({"text": "hi", "level": 60, "badge": "vip"}));
        assert_eq!(answer["data"]["level"], 48);
        assert_eq!(answer["data"]["badge"], "fan");
        let vip = decide(
            &config(),
            &MuteList::default(),
            &send("star", "chat", json!({"text": "hi"})),
        );
        assert_eq!(serde_json::to_value(vip).unwrap()["data"]["badge"], "vip");
    }

    #[test]
    fn muted_user_is_rejected() {
        let muted = MuteList::new(["u1"]);
        let decision = decide(
            &config(),
            &muted,
            &send("u1", "chat", json!({"text": "hi"})),
        );
        assert_eq!(
            decision,
            Decision::Reject {
                code: "muted".into(),
                message: "you are muted in this room".into()
            }
        );
        // Muting applies to every kind; other users are unaffected.
        assert_eq!(
            decide(&config(), &muted, &send("u1", "like", Value::Null)).result(),
            "reject"
        );
        assert_eq!(
            decide(&config(), &muted, &send("u2", "chat", json!("hi"))).result(),
            "publish"
        );
    }

    #[test]
    fn mute_list_changes_at_run_time() {
        let mut muted = MuteList::default();
        let chat = send("u1", "chat", json!("hi"));
        assert!(muted.mute("u1"));
        assert!(!muted.mute("u1"));
        assert_eq!(decide(&config(), &muted, &chat).result(), "reject");
        assert!(muted.unmute("u1"));
        assert!(!muted.unmute("u1"));
        assert_eq!(decide(&config(), &muted, &chat).result(), "publish");
    }

    #[test]
    fn banned_user_is_disconnected_even_when_muted() {
        let muted = MuteList::new(["troll"]);
        let decision = decide(&config(), &muted, &send("troll", "chat", json!("hi")));
        assert_eq!(
            decision,
            Decision::Disconnect {
                code: 4403,
                reason: "banned".into()
            }
        );
    }

    #[test]
    fn accept_kinds_are_accepted_and_other_kinds_published_unchanged() {
        let muted = MuteList::default();
        let like = send("u1", "like", json!({"count": 3}));
        assert_eq!(decide(&config(), &muted, &like), Decision::Accept);
        let gift = send("u1", "gift", json!({"text": "spam", "id": 7}));
        assert_eq!(
            decide(&config(), &muted, &gift),
            Decision::publish_unchanged()
        );
    }
}
