//! The core [`Message`] handle: envelope, metadata, body, due time, attempt
//! counter and scheduling value, plus the meta-spool JSON round trip and the
//! scheduled-queue name (spec §5.3).
//!
//! All state sits behind one `parking_lot::Mutex` that is only ever held for
//! the duration of a field read or write: nothing slow (I/O, Lua, parsing of
//! the whole body) runs while it is held. Body edits made by the header/MIME
//! API read the bytes (a cheap `Bytes` clone), work on them unlocked, and
//! store the result back.

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::SystemTime;
use tern_types::{EnvelopeAddress, QueueName, SpoolId};

/// A message: cheap to clone (an `Arc` around the shared state), so the Lua
/// userdata and the server share one value.
#[derive(Clone)]
pub struct Message(Arc<MessageInner>);

struct MessageInner {
    id: SpoolId,
    state: Mutex<MessageState>,
}

/// The mutable part of a message. Only reachable through [`Message`]'s
/// accessors, which keep the dirty flags honest.
#[derive(Debug, Clone)]
pub struct MessageState {
    sender: EnvelopeAddress,
    recipients: Vec<EnvelopeAddress>,
    meta: Map<String, Value>,
    data: Bytes,
    due: Option<SystemTime>,
    num_attempts: u16,
    scheduling: Option<Value>,
    data_dirty: bool,
    meta_dirty: bool,
    force_sync: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.state.lock();
        f.debug_struct("Message")
            .field("id", &self.0.id.to_string())
            .field("sender", &state.sender.email())
            .field("recipients", &state.recipients.len())
            .field("size", &state.data.len())
            .finish()
    }
}

impl Message {
    /// A freshly received (or generated) message. Both dirty flags start set:
    /// nothing of it is in the spool yet.
    pub fn new(
        id: SpoolId,
        sender: EnvelopeAddress,
        recipients: Vec<EnvelopeAddress>,
        meta: Map<String, Value>,
        data: Bytes,
    ) -> Self {
        Self(Arc::new(MessageInner {
            id,
            state: Mutex::new(MessageState {
                sender,
                recipients,
                meta,
                data,
                due: None,
                num_attempts: 0,
                scheduling: None,
                data_dirty: true,
                meta_dirty: true,
                force_sync: false,
            }),
        }))
    }

    pub fn id(&self) -> SpoolId {
        self.0.id
    }

    /// True when both handles refer to the same message object.
    pub fn ptr_eq(&self, other: &Message) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn sender(&self) -> EnvelopeAddress {
        self.0.state.lock().sender.clone()
    }

    pub fn set_sender(&self, sender: EnvelopeAddress) {
        let mut state = self.0.state.lock();
        state.sender = sender;
        state.meta_dirty = true;
    }

    pub fn recipients(&self) -> Vec<EnvelopeAddress> {
        self.0.state.lock().recipients.clone()
    }

    pub fn recipient_count(&self) -> usize {
        self.0.state.lock().recipients.len()
    }

    pub fn first_recipient(&self) -> Option<EnvelopeAddress> {
        self.0.state.lock().recipients.first().cloned()
    }

    pub fn set_recipients(&self, recipients: Vec<EnvelopeAddress>) {
        let mut state = self.0.state.lock();
        state.recipients = recipients;
        state.meta_dirty = true;
    }

    /// One meta value (a clone), `None` when absent.
    pub fn get_meta(&self, key: &str) -> Option<Value> {
        self.0.state.lock().meta.get(key).cloned()
    }

    /// A meta value as a string, `None` when absent or not a string.
    pub fn get_meta_str(&self, key: &str) -> Option<String> {
        match self.0.state.lock().meta.get(key) {
            Some(Value::String(text)) => Some(text.clone()),
            _ => None,
        }
    }

    /// Set a meta value. Setting JSON `null` removes the key, which is how a
    /// policy's `msg:set_meta(key, nil)` clears it.
    pub fn set_meta(&self, key: &str, value: Value) {
        let mut state = self.0.state.lock();
        if value.is_null() {
            state.meta.remove(key);
        } else {
            state.meta.insert(key.to_string(), value);
        }
        state.meta_dirty = true;
    }

    /// A copy of the whole meta object.
    pub fn meta(&self) -> Map<String, Value> {
        self.0.state.lock().meta.clone()
    }

    /// The whole message bytes (a cheap reference-counted clone).
    pub fn data(&self) -> Bytes {
        self.0.state.lock().data.clone()
    }

    pub fn set_data(&self, data: Bytes) {
        let mut state = self.0.state.lock();
        state.data = data;
        state.data_dirty = true;
    }

    pub fn size(&self) -> usize {
        self.0.state.lock().data.len()
    }

    pub fn due(&self) -> Option<SystemTime> {
        self.0.state.lock().due
    }

    pub fn set_due(&self, due: Option<SystemTime>) {
        self.0.state.lock().due = due;
    }

    pub fn num_attempts(&self) -> u16 {
        self.0.state.lock().num_attempts
    }

    pub fn increment_num_attempts(&self) {
        let mut state = self.0.state.lock();
        state.num_attempts = state.num_attempts.saturating_add(1);
    }

    pub fn set_num_attempts(&self, attempts: u16) {
        self.0.state.lock().num_attempts = attempts;
    }

    /// The scheduling constraints set by `msg:set_scheduling` (spec §21), as
    /// the JSON value the queue crate interprets; `None` when unset.
    pub fn scheduling(&self) -> Option<Value> {
        self.0.state.lock().scheduling.clone()
    }

    /// Store (or clear, with `None` or JSON `null`) the scheduling value.
    pub fn set_scheduling(&self, scheduling: Option<Value>) {
        let mut state = self.0.state.lock();
        state.scheduling = scheduling.filter(|value| !value.is_null());
        state.meta_dirty = true;
    }

    /// `msg:set_force_sync(true)`: ask the spool to write this message
    /// durably even when the spool is configured without `flush`.
    pub fn set_force_sync(&self, force: bool) {
        self.0.state.lock().force_sync = force;
    }

    pub fn force_sync(&self) -> bool {
        self.0.state.lock().force_sync
    }

    /// Whether the body changed since it was last written to the spool.
    pub fn is_data_dirty(&self) -> bool {
        self.0.state.lock().data_dirty
    }

    /// Whether envelope, meta or scheduling changed since the last spool write.
    pub fn is_meta_dirty(&self) -> bool {
        self.0.state.lock().meta_dirty
    }

    /// Called by the spool after a successful write of both parts.
    pub fn mark_clean(&self) {
        let mut state = self.0.state.lock();
        state.data_dirty = false;
        state.meta_dirty = false;
    }

    pub fn mark_data_clean(&self) {
        self.0.state.lock().data_dirty = false;
    }

    pub fn mark_meta_clean(&self) {
        self.0.state.lock().meta_dirty = false;
    }

    /// True when the body has not been loaded (recovery loads meta first).
    pub fn is_data_loaded(&self) -> bool {
        !self.0.state.lock().data.is_empty()
    }

    /// Install the body read from the data spool without marking it dirty.
    pub fn load_data(&self, data: Bytes) {
        self.0.state.lock().data = data;
    }

    /// Replace the body with `edit(current)` when it returns `Some`. The edit
    /// runs without the lock; if another writer replaced the body meanwhile,
    /// the edit is re-run on the new body, so concurrent edits never lose
    /// each other's changes. Returns whether the body changed.
    pub(crate) fn edit_data<E>(
        &self,
        mut edit: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<bool, E> {
        loop {
            let current = self.data();
            let Some(updated) = edit(&current)? else {
                return Ok(false);
            };
            let mut state = self.0.state.lock();
            let unchanged =
                state.data.as_ptr() == current.as_ptr() && state.data.len() == current.len();
            if unchanged {
                state.data = Bytes::from(updated);
                state.data_dirty = true;
                return Ok(true);
            }
        }
    }

    /// Set several meta values at once (one lock, one dirty mark).
    pub(crate) fn set_meta_many(&self, values: Vec<(String, Value)>) {
        if values.is_empty() {
            return;
        }
        let mut state = self.0.state.lock();
        for (key, value) in values {
            state.meta.insert(key, value);
        }
        state.meta_dirty = true;
    }

    /// The scheduled queue name (spec §5.3): meta `queue` verbatim when it is
    /// a string, else `campaign:tenant@domain!routing_domain` built from the
    /// meta keys and the lowercased domain of the first recipient.
    ///
    /// A control key holding anything but a string (or `null`) is an error,
    /// as in KumoMTA: quietly ignoring `msg:set_meta('tenant', 42)` would
    /// route the message through the wrong queue's configuration.
    pub fn queue_name(&self) -> Result<String, String> {
        let state = self.0.state.lock();
        let meta_str = |key: &str| match state.meta.get(key) {
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(Value::Null) | None => Ok(None),
            Some(other) => Err(format!(
                "meta '{key}' must be a string to name a queue, got {other}"
            )),
        };
        if let Some(queue) = meta_str("queue")? {
            return Ok(queue.to_string());
        }
        let recipient = state
            .recipients
            .first()
            .ok_or_else(|| "message has no recipients".to_string())?;
        let domain = recipient.domain();
        if domain.is_empty() {
            return Err(format!("recipient '{}' has no domain", recipient.email()));
        }
        Ok(QueueName::new(
            meta_str("campaign")?,
            meta_str("tenant")?,
            domain,
            meta_str("routing_domain")?,
        )
        .to_string())
    }

    /// The meta-spool document (spec §2.2):
    /// `{"sender": "...", "recipient": "..." | [...], "meta": {...}, "schedule": value|null}`.
    pub fn meta_spool_bytes(&self) -> Vec<u8> {
        let state = self.0.state.lock();
        let recipient = match state.recipients.as_slice() {
            [only] => Value::String(only.email().to_string()),
            many => Value::Array(
                many.iter()
                    .map(|r| Value::String(r.email().to_string()))
                    .collect(),
            ),
        };
        let mut doc = Map::with_capacity(4);
        doc.insert(
            "sender".into(),
            Value::String(state.sender.email().to_string()),
        );
        doc.insert("recipient".into(), recipient);
        doc.insert("meta".into(), Value::Object(state.meta.clone()));
        doc.insert(
            "schedule".into(),
            state.scheduling.clone().unwrap_or(Value::Null),
        );
        drop(state);
        // Serialising a Value built from strings and maps cannot fail.
        serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
    }

    /// Rebuild a message from its two spool parts. The result is clean (not
    /// dirty): it is exactly what the spool holds.
    pub fn from_spool(id: SpoolId, meta_bytes: &[u8], data: Bytes) -> Result<Self, String> {
        let msg = Self::from_meta_spool_only(id, meta_bytes)?;
        msg.load_data(data);
        Ok(msg)
    }

    /// Rebuild a message from the meta spool alone (recovery walks the meta
    /// spool first); the body is empty until [`Message::load_data`].
    pub fn from_meta_spool_only(id: SpoolId, meta_bytes: &[u8]) -> Result<Self, String> {
        let fail = |why: String| format!("corrupt meta spool entry for {id}: {why}");
        let doc: Value = serde_json::from_slice(meta_bytes).map_err(|e| fail(e.to_string()))?;
        let Value::Object(mut doc) = doc else {
            return Err(fail("not a JSON object".into()));
        };
        let sender = match doc.get("sender") {
            Some(Value::String(text)) => EnvelopeAddress::parse(text).map_err(fail)?,
            Some(Value::Null) | None => EnvelopeAddress::null_sender(),
            Some(other) => return Err(fail(format!("sender is not a string: {other}"))),
        };
        let parse_recipient = |value: &Value| match value {
            Value::String(text) => EnvelopeAddress::parse(text).map_err(fail),
            other => Err(fail(format!("recipient is not a string: {other}"))),
        };
        let recipients = match doc.get("recipient") {
            Some(Value::Array(items)) => items
                .iter()
                .map(parse_recipient)
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Null) | None => return Err(fail("missing recipient".into())),
            Some(single) => vec![parse_recipient(single)?],
        };
        let meta = match doc.remove("meta") {
            Some(Value::Object(meta)) => meta,
            Some(Value::Null) | None => Map::new(),
            Some(other) => return Err(fail(format!("meta is not an object: {other}"))),
        };
        let scheduling = doc.remove("schedule").filter(|value| !value.is_null());
        let msg = Self::new(id, sender, recipients, meta, Bytes::new());
        {
            let mut state = msg.0.state.lock();
            state.scheduling = scheduling;
            state.data_dirty = false;
            state.meta_dirty = false;
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(text: &str) -> EnvelopeAddress {
        EnvelopeAddress::parse(text).unwrap()
    }

    fn sample(recipients: &[&str], meta: Value) -> Message {
        let Value::Object(meta) = meta else { panic!() };
        Message::new(
            SpoolId::new(),
            addr("sender@example.com"),
            recipients.iter().map(|r| addr(r)).collect(),
            meta,
            Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
        )
    }

    #[test]
    fn message_is_send_sync_and_shared() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Message>();
        let msg = sample(&["a@b.com"], json!({}));
        let other = msg.clone();
        other.set_meta("k", json!(1));
        assert_eq!(msg.get_meta("k"), Some(json!(1)));
        assert!(msg.ptr_eq(&other));
    }

    #[test]
    fn envelope_accessors() {
        let msg = sample(&["a@b.com", "c@d.com"], json!({}));
        assert_eq!(msg.sender().email(), "sender@example.com");
        assert_eq!(msg.first_recipient().unwrap().email(), "a@b.com");
        assert_eq!(msg.recipients().len(), 2);
        msg.set_sender(addr("x@y.com"));
        msg.set_recipients(vec![addr("z@w.com")]);
        assert_eq!(msg.sender().domain(), "y.com");
        assert_eq!(msg.recipients(), vec![addr("z@w.com")]);
        assert_eq!(msg.size(), 21);
        msg.set_data(Bytes::from_static(b"x"));
        assert_eq!(msg.data(), Bytes::from_static(b"x"));
    }

    #[test]
    fn meta_set_get_and_null_removes() {
        let msg = sample(&["a@b.com"], json!({"tenant": "t"}));
        assert_eq!(msg.get_meta_str("tenant").as_deref(), Some("t"));
        msg.set_meta("obj", json!({"a": [1, 2]}));
        assert_eq!(msg.get_meta("obj"), Some(json!({"a": [1, 2]})));
        msg.set_meta("tenant", Value::Null);
        assert_eq!(msg.get_meta("tenant"), None);
        assert_eq!(msg.meta().len(), 1);
    }

    #[test]
    fn attempts_and_due() {
        let msg = sample(&["a@b.com"], json!({}));
        assert_eq!(msg.num_attempts(), 0);
        msg.increment_num_attempts();
        msg.increment_num_attempts();
        assert_eq!(msg.num_attempts(), 2);
        msg.set_num_attempts(u16::MAX);
        msg.increment_num_attempts();
        assert_eq!(msg.num_attempts(), u16::MAX);
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        msg.set_due(Some(when));
        assert_eq!(msg.due(), Some(when));
        msg.set_due(None);
        assert_eq!(msg.due(), None);
    }

    #[test]
    fn queue_names_follow_the_spec() {
        let cases = [
            (json!({}), "example.com"),
            (json!({"tenant": "acme"}), "acme@example.com"),
            (json!({"campaign": "promo"}), "promo:@example.com"),
            (
                json!({"campaign": "welcome", "tenant": "acme"}),
                "welcome:acme@example.com",
            ),
            (
                json!({"tenant": "acme", "routing_domain": "outlook.com"}),
                "acme@example.com!outlook.com",
            ),
            (json!({"queue": "webhook", "tenant": "acme"}), "webhook"),
            (json!({"tenant": null, "campaign": null}), "example.com"),
        ];
        for (meta, expected) in cases {
            let msg = sample(&["User@EXAMPLE.com", "x@other.com"], meta);
            assert_eq!(msg.queue_name().unwrap(), expected);
        }
        // A control key that is not a string is an error naming it, not a
        // silently different queue.
        for (meta, key) in [
            (json!({"tenant": 5}), "tenant"),
            (json!({"campaign": true, "tenant": "acme"}), "campaign"),
            (json!({"routing_domain": ["a.com"]}), "routing_domain"),
            (json!({"queue": {"name": "q"}}), "queue"),
        ] {
            let msg = sample(&["u@example.com"], meta);
            let err = msg.queue_name().unwrap_err();
            assert!(
                err.contains(&format!("meta '{key}' must be a string")),
                "{err}"
            );
        }
        let literal = sample(&["u@[10.0.0.1]"], json!({}));
        assert_eq!(literal.queue_name().unwrap(), "[10.0.0.1]");
        let none = sample(&[], json!({}));
        assert!(none.queue_name().unwrap_err().contains("no recipients"));
    }

    #[test]
    fn meta_spool_round_trip_single_and_multi() {
        let msg = sample(&["a@b.com"], json!({"tenant": "t", "n": 3}));
        msg.set_scheduling(Some(json!({"expires": "2030-01-01T00:00:00Z"})));
        let bytes = msg.meta_spool_bytes();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["recipient"], json!("a@b.com"));
        assert_eq!(doc["sender"], json!("sender@example.com"));
        assert_eq!(doc["schedule"]["expires"], json!("2030-01-01T00:00:00Z"));
        let back = Message::from_spool(msg.id(), &bytes, msg.data()).unwrap();
        assert_eq!(back.id(), msg.id());
        assert_eq!(back.recipients(), msg.recipients());
        assert_eq!(back.meta(), msg.meta());
        assert_eq!(back.scheduling(), msg.scheduling());
        assert_eq!(back.data(), msg.data());
        assert!(!back.is_meta_dirty() && !back.is_data_dirty());

        let multi = sample(&["a@b.com", "c@d.com"], json!({}));
        let bytes = multi.meta_spool_bytes();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["recipient"], json!(["a@b.com", "c@d.com"]));
        assert_eq!(doc["schedule"], Value::Null);
        let back = Message::from_meta_spool_only(multi.id(), &bytes).unwrap();
        assert_eq!(back.recipients().len(), 2);
        assert!(!back.is_data_loaded());
        assert_eq!(back.scheduling(), None);
    }

    #[test]
    fn null_sender_round_trips() {
        let msg = Message::new(
            SpoolId::new(),
            EnvelopeAddress::null_sender(),
            vec![addr("a@b.com")],
            Map::new(),
            Bytes::new(),
        );
        let back = Message::from_meta_spool_only(msg.id(), &msg.meta_spool_bytes()).unwrap();
        assert!(back.sender().is_null());
    }

    #[test]
    fn corrupt_meta_spool_is_a_clear_error() {
        let id = SpoolId::new();
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"{\"sender\":\"a@b.com\"}",
            b"{\"sender\":\"a@b.com\",\"recipient\":5}",
            b"{\"sender\":\"bad\",\"recipient\":\"a@b.com\"}",
            b"{\"sender\":\"a@b.com\",\"recipient\":\"a@b.com\",\"meta\":[]}",
        ] {
            let err = Message::from_meta_spool_only(id, bad).unwrap_err();
            assert!(err.contains("corrupt meta spool entry"), "{err}");
        }
    }

    #[test]
    fn dirty_flags_track_changes() {
        let msg = sample(&["a@b.com"], json!({}));
        assert!(msg.is_data_dirty() && msg.is_meta_dirty());
        msg.mark_clean();
        assert!(!msg.is_data_dirty() && !msg.is_meta_dirty());
        msg.set_meta("a", json!(1));
        assert!(msg.is_meta_dirty() && !msg.is_data_dirty());
        msg.mark_meta_clean();
        msg.set_data(Bytes::from_static(b"y"));
        assert!(msg.is_data_dirty() && !msg.is_meta_dirty());
    }
}
