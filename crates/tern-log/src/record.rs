//! The log record: one JSON object per event, byte-compatible with the
//! records KumoMTA writes (spec §12.2).
//!
//! Everything that consumes Tern's logs (the `tern logs` reader, log hooks,
//! operators' own tooling written against KumoMTA) depends on the exact
//! shape produced here: the field order, which absent fields are written as
//! `null` and which are left out, the recipient being a plain string when
//! there is exactly one, and the time stamps written twice (integer seconds
//! and RFC 3339 with nanoseconds). `LogRecord` therefore has a hand-written
//! `Serialize` implementation instead of a derived one, and
//! [`LogRecord::write_json`] streams it straight into a caller-owned buffer.
//!
//! The constructors ([`LogRecord::reception`], [`LogRecord::delivery`], ...)
//! fill in the fields that are fixed for each record type so that producers
//! only supply what they know; the `with_*` methods set the rest.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use tern_types::SpoolId;
use uuid::Uuid;

/// The kinds of record (spec §12.3). The serialised names are the variant
/// names exactly as written here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordType {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    AdminBounce,
    #[allow(clippy::upper_case_acronyms)]
    OOB,
    Feedback,
    Rejection,
    AdminRebind,
    DeferredInjectionRebind,
    Delayed,
    XferOut,
    XferIn,
}

impl RecordType {
    /// Every record type, in the order of the spec's table.
    pub const ALL: [RecordType; 14] = [
        RecordType::Reception,
        RecordType::Delivery,
        RecordType::TransientFailure,
        RecordType::Bounce,
        RecordType::Expiration,
        RecordType::AdminBounce,
        RecordType::OOB,
        RecordType::Feedback,
        RecordType::Rejection,
        RecordType::AdminRebind,
        RecordType::DeferredInjectionRebind,
        RecordType::Delayed,
        RecordType::XferOut,
        RecordType::XferIn,
    ];

    /// The name used in the `type` field and as a `per_record` key.
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordType::Reception => "Reception",
            RecordType::Delivery => "Delivery",
            RecordType::TransientFailure => "TransientFailure",
            RecordType::Bounce => "Bounce",
            RecordType::Expiration => "Expiration",
            RecordType::AdminBounce => "AdminBounce",
            RecordType::OOB => "OOB",
            RecordType::Feedback => "Feedback",
            RecordType::Rejection => "Rejection",
            RecordType::AdminRebind => "AdminRebind",
            RecordType::DeferredInjectionRebind => "DeferredInjectionRebind",
            RecordType::Delayed => "Delayed",
            RecordType::XferOut => "XferOut",
            RecordType::XferIn => "XferIn",
        }
    }

    /// Whether the bounce classifier runs for this type; the others always
    /// carry `"Uncategorized"`.
    pub const fn is_classifiable(self) -> bool {
        matches!(
            self,
            RecordType::Bounce
                | RecordType::TransientFailure
                | RecordType::Expiration
                | RecordType::AdminBounce
                | RecordType::OOB
                | RecordType::Feedback
                | RecordType::Rejection
        )
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RecordType::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = RecordType::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown log record type '{s}'; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// An RFC 3463 enhanced status code, e.g. `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parse `"5.7.1"`; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(2..=5).contains(&class) {
            return None;
        }
        Some(Self::new(class, subject, detail))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The response that a record reports: the remote reply for delivery
/// records, our own reply for Rejection, `250` for Reception.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub code: u16,
    pub enhanced_code: Option<EnhancedCode>,
    /// Single line: the text after the code and enhanced code.
    pub content: String,
    /// The command the reply answered (e.g. `".\r\n"`), when known.
    pub command: Option<String>,
}

impl Response {
    pub fn new(code: u16, enhanced_code: Option<EnhancedCode>, content: impl Into<String>) -> Self {
        Self {
            code,
            enhanced_code,
            content: content.into(),
            command: None,
        }
    }

    /// The response Reception records carry: `250`, no enhanced code, no text.
    pub fn accepted() -> Self {
        Self::new(250, None, "")
    }

    /// Build from the text of an SMTP reply as received, possibly multi-line
    /// (`"550-5.7.1 first\r\n550 5.7.1 second"`): the code is taken from the
    /// first line, the enhanced code from the first line's text if it has
    /// one, and the lines' texts are joined with a space so that `content`
    /// stays on one line.
    pub fn from_smtp_reply(reply: &str) -> Option<Self> {
        let mut code = None;
        let mut enhanced = None;
        let mut content = String::with_capacity(reply.len());
        for (index, line) in reply.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let line_code: u16 = line.get(..3)?.parse().ok()?;
            let mut text = line.get(4..).unwrap_or("");
            if index == 0 {
                code = Some(line_code);
                if let Some((first, rest)) = text.split_once(' ') {
                    if let Some(parsed) = EnhancedCode::parse(first) {
                        enhanced = Some(parsed);
                        text = rest;
                    }
                } else if let Some(parsed) = EnhancedCode::parse(text) {
                    enhanced = Some(parsed);
                    text = "";
                }
            } else if let Some(code) = enhanced {
                // continuation lines repeat the enhanced code: drop it
                let prefix = code.to_string();
                if let Some(rest) = text.strip_prefix(prefix.as_str()) {
                    text = rest.trim_start();
                }
            }
            if !content.is_empty() {
                content.push(' ');
            }
            content.push_str(text);
        }
        Some(Self {
            code: code?,
            enhanced_code: enhanced,
            content,
            command: None,
        })
    }

    pub fn with_command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }
}

/// `peer_address`: EHLO name and IP when receiving; MX host name and IP
/// when delivering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    pub name: String,
    pub addr: String,
}

impl PeerAddress {
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            addr: addr.into(),
        }
    }
}

/// `source_address` of SMTP delivery records: the local address used and,
/// when a proxy carried the connection, its protocol and server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAddress {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl SourceAddress {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            protocol: None,
            server: None,
        }
    }
}

/// One log record. Field order here is the serialisation order.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub kind: RecordType,
    /// `None` serialises as `""` (Rejection records have no message).
    pub id: Option<SpoolId>,
    /// Envelope sender; `""` for the null sender.
    pub sender: String,
    /// One entry serialises as a string, any other count as an array.
    pub recipients: Vec<String>,
    pub queue: String,
    pub site: String,
    pub size: u64,
    pub response: Response,
    pub peer_address: Option<PeerAddress>,
    /// When the record was produced: `timestamp` and `event_time`.
    pub event_time: DateTime<Utc>,
    /// When the message was created: `created` and `created_time`.
    pub created_time: DateTime<Utc>,
    pub num_attempts: u32,
    pub bounce_classification: String,
    pub egress_pool: Option<String>,
    pub egress_source: Option<String>,
    pub source_address: Option<SourceAddress>,
    pub feedback_report: Option<Value>,
    pub meta: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub delivery_protocol: Option<String>,
    pub reception_protocol: Option<String>,
    pub nodeid: Uuid,
    pub tls_cipher: Option<String>,
    pub tls_protocol_version: Option<String>,
    pub tls_peer_subject_name: Option<Vec<String>>,
    pub provider_name: Option<String>,
    pub session_id: Option<Uuid>,
}

/// The classification label written when nothing classified the record.
pub const UNCATEGORIZED: &str = "Uncategorized";

impl LogRecord {
    /// A record of `kind` with every optional field empty, produced now.
    /// Prefer the per-type constructors below.
    pub fn new(kind: RecordType, nodeid: Uuid) -> Self {
        let now = Utc::now();
        Self {
            kind,
            id: None,
            sender: String::new(),
            recipients: Vec::new(),
            queue: String::new(),
            site: String::new(),
            size: 0,
            response: Response::accepted(),
            peer_address: None,
            event_time: now,
            created_time: now,
            num_attempts: 0,
            bounce_classification: UNCATEGORIZED.to_string(),
            egress_pool: None,
            egress_source: None,
            source_address: None,
            feedback_report: None,
            meta: Map::new(),
            headers: Map::new(),
            delivery_protocol: None,
            reception_protocol: None,
            nodeid,
            tls_cipher: None,
            tls_protocol_version: None,
            tls_peer_subject_name: None,
            provider_name: None,
            session_id: None,
        }
    }

    /// A record about message `msg`: id, creation time, sender,
    /// recipients, queue and size come from it.
    pub fn for_message(kind: RecordType, nodeid: Uuid, msg: MessageInfo<'_>) -> Self {
        let mut record = Self::new(kind, nodeid);
        record.id = Some(msg.id);
        record.created_time = DateTime::<Utc>::from(msg.id.created());
        record.sender = msg.sender.to_string();
        record.recipients = msg.recipients.iter().map(|r| r.to_string()).collect();
        record.queue = msg.queue.to_string();
        record.size = msg.size;
        record.num_attempts = msg.num_attempts;
        record.reception_protocol = msg.reception_protocol.map(str::to_string);
        record
    }

    /// Message accepted: `250`, empty `site`.
    pub fn reception(nodeid: Uuid, msg: MessageInfo<'_>) -> Self {
        Self::for_message(RecordType::Reception, nodeid, msg)
    }

    /// Our SMTP server refused something: no id, queue or size; `sender`
    /// and `recipient` are the current transaction's, if any.
    pub fn rejection(
        nodeid: Uuid,
        sender: &str,
        recipient: Option<&str>,
        response: Response,
    ) -> Self {
        let mut record = Self::new(RecordType::Rejection, nodeid);
        record.sender = sender.to_string();
        record.recipients = recipient.map(|r| vec![r.to_string()]).unwrap_or_default();
        record.response = response;
        record
    }

    /// Successful delivery via ready queue `site`.
    pub fn delivery(nodeid: Uuid, msg: MessageInfo<'_>, site: &str, response: Response) -> Self {
        Self::attempt(RecordType::Delivery, nodeid, msg, site, response)
    }

    /// Temporary failure of an attempt.
    pub fn transient_failure(
        nodeid: Uuid,
        msg: MessageInfo<'_>,
        site: &str,
        response: Response,
    ) -> Self {
        Self::attempt(RecordType::TransientFailure, nodeid, msg, site, response)
    }

    /// Permanent failure.
    pub fn bounce(nodeid: Uuid, msg: MessageInfo<'_>, site: &str, response: Response) -> Self {
        Self::attempt(RecordType::Bounce, nodeid, msg, site, response)
    }

    /// Message removed because it grew too old (`551 5.4.7 ...`).
    pub fn expiration(nodeid: Uuid, msg: MessageInfo<'_>, site: &str, response: Response) -> Self {
        Self::attempt(RecordType::Expiration, nodeid, msg, site, response)
    }

    /// Message put into a scheduled queue for a reason not already logged
    /// as a TransientFailure.
    pub fn delayed(nodeid: Uuid, msg: MessageInfo<'_>, site: &str, response: Response) -> Self {
        Self::attempt(RecordType::Delayed, nodeid, msg, site, response)
    }

    /// Any other message-related record type with a site and response.
    pub fn attempt(
        kind: RecordType,
        nodeid: Uuid,
        msg: MessageInfo<'_>,
        site: &str,
        response: Response,
    ) -> Self {
        let mut record = Self::for_message(kind, nodeid, msg);
        record.site = site.to_string();
        record.response = response;
        record
    }

    pub fn with_peer(mut self, name: impl Into<String>, addr: impl Into<String>) -> Self {
        self.peer_address = Some(PeerAddress::new(name, addr));
        self
    }

    pub fn with_egress(mut self, pool: impl Into<String>, source: impl Into<String>) -> Self {
        self.egress_pool = Some(pool.into());
        self.egress_source = Some(source.into());
        self
    }

    pub fn with_source_address(mut self, source: SourceAddress) -> Self {
        self.source_address = Some(source);
        self
    }

    pub fn with_delivery_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.delivery_protocol = Some(protocol.into());
        self
    }

    pub fn with_reception_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.reception_protocol = Some(protocol.into());
        self
    }

    pub fn with_tls(
        mut self,
        cipher: impl Into<String>,
        protocol_version: impl Into<String>,
        peer_subject_name: Option<Vec<String>>,
    ) -> Self {
        self.tls_cipher = Some(cipher.into());
        self.tls_protocol_version = Some(protocol_version.into());
        self.tls_peer_subject_name = peer_subject_name;
        self
    }

    pub fn with_session_id(mut self, session_id: Uuid) -> Self {
        self.session_id = Some(session_id);
        self
    }

    pub fn with_classification(mut self, label: impl Into<String>) -> Self {
        self.bounce_classification = label.into();
        self
    }

    pub fn with_meta(mut self, meta: Map<String, Value>) -> Self {
        self.meta = meta;
        self
    }

    pub fn with_headers(mut self, headers: Map<String, Value>) -> Self {
        self.headers = headers;
        self
    }

    pub fn with_event_time(mut self, when: DateTime<Utc>) -> Self {
        self.event_time = when;
        self
    }

    /// Append this record as one line of JSON (without the newline) to
    /// `out`. Serialisation of these types cannot fail except for a
    /// non-string map key inside `meta`/`feedback_report`, which
    /// `serde_json::Value` cannot hold, so errors are only reported, never
    /// expected.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }

    /// The record as a JSON string (convenience for tests and hooks).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(768);
        // a LogRecord always serialises: every map key is a String
        self.write_json(&mut out)
            .expect("LogRecord serialisation cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Parse a record line written by Tern or KumoMTA.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The domains of the recipients (the part after the last `@`).
    pub fn recipient_domains(&self) -> impl Iterator<Item = &str> {
        self.recipients
            .iter()
            .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d))
    }
}

/// The message facts that message-related constructors need.
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo<'a> {
    pub id: SpoolId,
    pub sender: &'a str,
    pub recipients: &'a [&'a str],
    pub queue: &'a str,
    pub size: u64,
    pub num_attempts: u32,
    pub reception_protocol: Option<&'a str>,
}

/// Writes a UTC time as RFC 3339 with exactly nine fraction digits and `Z`
/// (`2025-09-12T11:08:01.440526026Z`) without allocating.
pub struct Rfc3339Nanos(pub DateTime<Utc>);

impl fmt::Display for Rfc3339Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        // leap-second representation: chrono encodes it as nanos >= 1e9
        let nanos = t.nanosecond().min(999_999_999);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            nanos
        )
    }
}

struct Rfc3339Field<'a>(&'a DateTime<Utc>);

impl Serialize for Rfc3339Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Rfc3339Nanos(*self.0))
    }
}

struct RecipientField<'a>(&'a [String]);

impl Serialize for RecipientField<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            [single] => s.serialize_str(single),
            many => many.serialize(s),
        }
    }
}

struct IdField<'a>(&'a Option<SpoolId>);

impl Serialize for IdField<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(id) => s.collect_str(id),
            None => s.serialize_str(""),
        }
    }
}

impl Serialize for LogRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let optional = [
            self.tls_cipher.is_some(),
            self.tls_protocol_version.is_some(),
            self.tls_peer_subject_name.is_some(),
            self.provider_name.is_some(),
            self.session_id.is_some(),
        ];
        let count = 23 + optional.iter().filter(|present| **present).count();
        let mut st = s.serialize_struct("LogRecord", count)?;
        st.serialize_field("type", &self.kind)?;
        st.serialize_field("id", &IdField(&self.id))?;
        st.serialize_field("sender", &self.sender)?;
        st.serialize_field("recipient", &RecipientField(&self.recipients))?;
        st.serialize_field("queue", &self.queue)?;
        st.serialize_field("site", &self.site)?;
        st.serialize_field("size", &self.size)?;
        st.serialize_field("response", &self.response)?;
        st.serialize_field("peer_address", &self.peer_address)?;
        st.serialize_field("timestamp", &self.event_time.timestamp())?;
        st.serialize_field("event_time", &Rfc3339Field(&self.event_time))?;
        st.serialize_field("created", &self.created_time.timestamp())?;
        st.serialize_field("created_time", &Rfc3339Field(&self.created_time))?;
        st.serialize_field("num_attempts", &self.num_attempts)?;
        st.serialize_field("bounce_classification", &self.bounce_classification)?;
        st.serialize_field("egress_pool", &self.egress_pool)?;
        st.serialize_field("egress_source", &self.egress_source)?;
        st.serialize_field("source_address", &self.source_address)?;
        st.serialize_field("feedback_report", &self.feedback_report)?;
        st.serialize_field("meta", &self.meta)?;
        st.serialize_field("headers", &self.headers)?;
        st.serialize_field("delivery_protocol", &self.delivery_protocol)?;
        st.serialize_field("reception_protocol", &self.reception_protocol)?;
        st.serialize_field("nodeid", &self.nodeid.hyphenated())?;
        if let Some(value) = &self.tls_cipher {
            st.serialize_field("tls_cipher", value)?;
        }
        if let Some(value) = &self.tls_protocol_version {
            st.serialize_field("tls_protocol_version", value)?;
        }
        if let Some(value) = &self.tls_peer_subject_name {
            st.serialize_field("tls_peer_subject_name", value)?;
        }
        if let Some(value) = &self.provider_name {
            st.serialize_field("provider_name", value)?;
        }
        if let Some(value) = &self.session_id {
            st.serialize_field("session_id", &value.hyphenated())?;
        }
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireRecipients {
    One(String),
    Many(Vec<String>),
}

/// The on-disk shape, used only to read records back.
#[derive(Deserialize)]
struct WireRecord {
    #[serde(rename = "type")]
    kind: RecordType,
    #[serde(default)]
    id: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    recipient: Option<WireRecipients>,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    size: u64,
    response: Response,
    #[serde(default)]
    peer_address: Option<PeerAddress>,
    timestamp: i64,
    #[serde(default)]
    event_time: Option<String>,
    created: i64,
    #[serde(default)]
    created_time: Option<String>,
    #[serde(default)]
    num_attempts: u32,
    #[serde(default)]
    bounce_classification: Option<String>,
    #[serde(default)]
    egress_pool: Option<String>,
    #[serde(default)]
    egress_source: Option<String>,
    #[serde(default)]
    source_address: Option<SourceAddress>,
    #[serde(default)]
    feedback_report: Option<Value>,
    #[serde(default)]
    meta: Map<String, Value>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    delivery_protocol: Option<String>,
    #[serde(default)]
    reception_protocol: Option<String>,
    #[serde(default)]
    nodeid: Option<Uuid>,
    #[serde(default)]
    tls_cipher: Option<String>,
    #[serde(default)]
    tls_protocol_version: Option<String>,
    #[serde(default)]
    tls_peer_subject_name: Option<Vec<String>>,
    #[serde(default)]
    provider_name: Option<String>,
    #[serde(default)]
    session_id: Option<Uuid>,
}

/// Prefer the precise RFC 3339 text; fall back to the integer seconds.
fn pick_time<E: serde::de::Error>(precise: Option<&str>, secs: i64) -> Result<DateTime<Utc>, E> {
    if let Some(text) = precise
        && let Ok(parsed) = DateTime::parse_from_rfc3339(text)
    {
        return Ok(parsed.with_timezone(&Utc));
    }
    Utc.timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| E::custom(format!("timestamp {secs} is out of range")))
}

impl<'de> Deserialize<'de> for LogRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireRecord::deserialize(d)?;
        let id = if wire.id.is_empty() {
            None
        } else {
            Some(wire.id.parse().map_err(serde::de::Error::custom)?)
        };
        Ok(Self {
            kind: wire.kind,
            id,
            sender: wire.sender,
            recipients: match wire.recipient {
                None => Vec::new(),
                Some(WireRecipients::One(one)) => vec![one],
                Some(WireRecipients::Many(many)) => many,
            },
            queue: wire.queue,
            site: wire.site,
            size: wire.size,
            response: wire.response,
            peer_address: wire.peer_address,
            event_time: pick_time(wire.event_time.as_deref(), wire.timestamp)?,
            created_time: pick_time(wire.created_time.as_deref(), wire.created)?,
            num_attempts: wire.num_attempts,
            bounce_classification: wire
                .bounce_classification
                .unwrap_or_else(|| UNCATEGORIZED.to_string()),
            egress_pool: wire.egress_pool,
            egress_source: wire.egress_source,
            source_address: wire.source_address,
            feedback_report: wire.feedback_report,
            meta: wire.meta,
            headers: wire.headers,
            delivery_protocol: wire.delivery_protocol,
            reception_protocol: wire.reception_protocol,
            nodeid: wire.nodeid.unwrap_or_default(),
            tls_cipher: wire.tls_cipher,
            tls_protocol_version: wire.tls_protocol_version,
            tls_peer_subject_name: wire.tls_peer_subject_name,
            provider_name: wire.provider_name,
            session_id: wire.session_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_RECEPTION: &str = concat!(
        r#"{"type":"Reception","id":"d7ef132b5d7711eea8c8000c29c33806","sender":"test@example.com","#,
        r#""recipient":"test@example.com","queue":"example.com","site":"","size":320,"#,
        r#""response":{"code":250,"enhanced_code":null,"content":"","command":null},"#,
        r#""peer_address":{"name":"moto","addr":"127.0.0.1"},"timestamp":1695847980,"#,
        r#""event_time":"2023-09-27T20:53:00.123456789Z","created":1695847980,"#,
        r#""created_time":"2023-09-27T20:53:00.100000000Z","num_attempts":0,"#,
        r#""bounce_classification":"Uncategorized","egress_pool":null,"egress_source":null,"#,
        r#""source_address":null,"feedback_report":null,"meta":{},"headers":{},"#,
        r#""delivery_protocol":null,"reception_protocol":"ESMTP","#,
        r#""nodeid":"d8e014c7-eaeb-4683-a56e-61324e91b1fc","#,
        r#""session_id":"4f8b1a2c-0d3e-4b5f-9a6b-7c8d9e0f1a2b"}"#
    );

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, nanos).unwrap()
    }

    fn sample_reception() -> LogRecord {
        let id: SpoolId = "d7ef132b5d7711eea8c8000c29c33806".parse().unwrap();
        let nodeid: Uuid = "d8e014c7-eaeb-4683-a56e-61324e91b1fc".parse().unwrap();
        let msg = MessageInfo {
            id,
            sender: "test@example.com",
            recipients: &["test@example.com"],
            queue: "example.com",
            size: 320,
            num_attempts: 0,
            reception_protocol: Some("ESMTP"),
        };
        let mut record = LogRecord::reception(nodeid, msg)
            .with_peer("moto", "127.0.0.1")
            .with_event_time(at(1695847980, 123_456_789))
            .with_session_id("4f8b1a2c-0d3e-4b5f-9a6b-7c8d9e0f1a2b".parse().unwrap());
        // the sample's creation time is not the one encoded in its id
        record.created_time = at(1695847980, 100_000_000);
        record
    }

    #[test]
    fn reception_matches_the_spec_sample_byte_for_byte() {
        assert_eq!(sample_reception().to_json(), SAMPLE_RECEPTION);
    }

    #[test]
    fn sample_round_trips_through_the_reader_side() {
        let parsed = LogRecord::from_json(SAMPLE_RECEPTION).unwrap();
        assert_eq!(parsed, sample_reception());
        assert_eq!(parsed.to_json(), SAMPLE_RECEPTION);
    }

    #[test]
    fn recipient_is_a_string_for_one_and_an_array_otherwise() {
        let mut record = sample_reception();
        record.recipients = vec!["a@x.example".into(), "b@y.example".into()];
        let json: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            json["recipient"],
            serde_json::json!(["a@x.example", "b@y.example"])
        );
        record.recipients.clear();
        let json: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(json["recipient"], serde_json::json!([]));
        let back = LogRecord::from_json(&record.to_json()).unwrap();
        assert!(back.recipients.is_empty());
    }

    #[test]
    fn optional_tail_fields_are_omitted_and_nullable_ones_are_null() {
        let mut record = sample_reception();
        record.session_id = None;
        let text = record.to_json();
        for absent in [
            "tls_cipher",
            "tls_protocol_version",
            "tls_peer_subject_name",
            "provider_name",
            "session_id",
        ] {
            assert!(!text.contains(absent), "{absent} should be omitted: {text}");
        }
        for null in [
            "\"source_address\":null",
            "\"egress_pool\":null",
            "\"egress_source\":null",
            "\"feedback_report\":null",
            "\"delivery_protocol\":null",
        ] {
            assert!(text.contains(null), "{null} missing: {text}");
        }
        record.peer_address = None;
        assert!(record.to_json().contains("\"peer_address\":null"));
    }

    #[test]
    fn delivery_record_with_tls_has_fields_in_spec_order() {
        let nodeid = Uuid::new_v4();
        let id = SpoolId::new();
        let msg = MessageInfo {
            id,
            sender: "bounces@send.example.com",
            recipients: &["user@gmail.com"],
            queue: "welcome:acme@gmail.com",
            size: 3412,
            num_attempts: 1,
            reception_protocol: Some("ESMTP"),
        };
        let response = Response::from_smtp_reply("250 2.0.0 OK  1757675281 gsmtp")
            .unwrap()
            .with_command(".\r\n");
        let mut record = LogRecord::delivery(nodeid, msg, "ip-1->mx.example@smtp_client", response)
            .with_peer("mx.example.", "142.251.2.27")
            .with_egress("pool-1", "ip-1")
            .with_source_address(SourceAddress::new("10.0.0.1:53210"))
            .with_delivery_protocol("ESMTP")
            .with_tls(
                "TLS13_AES_256_GCM_SHA384",
                "TLSv1_3",
                Some(vec!["CN=mx.google.com".into()]),
            )
            .with_session_id(Uuid::new_v4());
        record.provider_name = Some("google".into());
        let text = record.to_json();
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "type",
                "id",
                "sender",
                "recipient",
                "queue",
                "site",
                "size",
                "response",
                "peer_address",
                "timestamp",
                "event_time",
                "created",
                "created_time",
                "num_attempts",
                "bounce_classification",
                "egress_pool",
                "egress_source",
                "source_address",
                "feedback_report",
                "meta",
                "headers",
                "delivery_protocol",
                "reception_protocol",
                "nodeid",
                "tls_cipher",
                "tls_protocol_version",
                "tls_peer_subject_name",
                "provider_name",
                "session_id"
            ]
        );
        assert!(text.contains(
            r#""response":{"code":250,"enhanced_code":{"class":2,"subject":0,"detail":0},"content":"OK  1757675281 gsmtp","command":".\r\n"}"#
        ));
        assert!(text.contains(r#""source_address":{"address":"10.0.0.1:53210"}"#));
        assert!(text.contains(&format!(r#""id":"{id}""#)));
        assert_eq!(
            record.created_time.timestamp(),
            DateTime::<Utc>::from(id.created()).timestamp()
        );
    }

    #[test]
    fn rejection_has_empty_id_queue_and_size() {
        let response = Response::new(550, Some(EnhancedCode::new(5, 7, 1)), "relaying denied")
            .with_command("RCPT TO:<x@y.example>\r\n");
        let record =
            LogRecord::rejection(Uuid::nil(), "a@b.example", Some("x@y.example"), response);
        let json: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(json["id"], "");
        assert_eq!(json["queue"], "");
        assert_eq!(json["size"], 0);
        assert_eq!(json["recipient"], "x@y.example");
        assert_eq!(json["type"], "Rejection");
        assert_eq!(json["nodeid"], "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn time_format_always_has_nine_digits() {
        assert_eq!(
            Rfc3339Nanos(at(1695847980, 5)).to_string(),
            "2023-09-27T20:53:00.000000005Z"
        );
        assert_eq!(
            Rfc3339Nanos(at(0, 0)).to_string(),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn smtp_replies_are_parsed_to_one_line() {
        let response =
            Response::from_smtp_reply("451-4.7.1 Try again\r\n451 4.7.1 later please\r\n").unwrap();
        assert_eq!(response.code, 451);
        assert_eq!(response.enhanced_code, Some(EnhancedCode::new(4, 7, 1)));
        assert_eq!(response.content, "Try again later please");
        let plain = Response::from_smtp_reply("421 closing").unwrap();
        assert_eq!(plain.enhanced_code, None);
        assert_eq!(plain.content, "closing");
        assert!(Response::from_smtp_reply("garbage").is_none());
        assert!(Response::from_smtp_reply("").is_none());
    }

    #[test]
    fn discriminants_index_the_all_table() {
        // the writer indexes per-type tables with `kind as usize`
        for (index, kind) in RecordType::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind}");
        }
    }

    #[test]
    fn record_type_names_round_trip() {
        for kind in RecordType::ALL {
            assert_eq!(kind.as_str().parse::<RecordType>().unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert!(
            "Delay"
                .parse::<RecordType>()
                .unwrap_err()
                .contains("Delayed")
        );
    }
}
