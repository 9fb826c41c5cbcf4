//! Lua bindings: `Message` as userdata with KumoMTA's method names, plus the
//! EnvelopeAddress and AddressHeader objects those methods return.
//!
//! The policy crate puts a [`Message`] into Lua with
//! `lua.create_userdata(msg.clone())` (or passes it as an event argument,
//! which `IntoLua` does for any `UserData`); the userdata and the server
//! share one message. JSON values cross the boundary through mlua's serde
//! support configured by [`json_to_lua`], so JSON `null` becomes Lua `nil`
//! rather than mlua's `NULL` sentinel.
//!
//! Methods of the KumoMTA surface that Tern does not implement are still
//! present and raise `msg:<name> is not supported by Tern yet`, so a policy
//! fails loudly and clearly instead of with "attempt to call a nil value".
//!
//! `msg:dkim_sign(signer)`, `msg:dkim_verify`, `msg:arc_verify` and
//! `msg:arc_seal` do their work in another crate: this crate cannot depend
//! on the DKIM crate (which depends on it) nor hold DNS resolvers, so the
//! methods call a [`DkimSignHook`] or an [`AuthHook`] that the DKIM crate
//! stores in the Lua state's app data. Without a hook each method raises
//! `msg:<name> is not supported by Tern yet`.
//! `msg:add_authentication_results` needs neither and is implemented here
//! (see [`crate::auth`]). `msg:save()` calls the [`SaveHook`] the server
//! installs, since only the server holds the spools.

use crate::address::{AddressHeader, Mailbox};
use crate::auth::AuthenticationResult;
use crate::edit::ImportHeaderSpec;
use crate::message::Message;
use crate::scheduling;
use mlua::{
    AnyUserData, Error as LuaError, FromLua, IntoLua, Lua, LuaSerdeExt, MetaMethod,
    Result as LuaResult, Table, UserData, UserDataFields, UserDataMethods, Value as LuaValue,
};
use serde_json::Value as JsonValue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tern_types::EnvelopeAddress;

/// What a [`SaveHook`] returns: completes once the message's data and
/// metadata are durable in the spools.
pub type SaveFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// `msg:save()`: write the message to the spools. Installed with
/// `lua.set_app_data(SaveHook(...))` by the server, which owns the spools;
/// without it (a tool script, a state made before the spools open) the
/// method raises an error saying so.
#[derive(Clone)]
pub struct SaveHook(pub Arc<dyn Fn(&Message) -> SaveFuture + Send + Sync>);

/// What a [`DkimSignHook`] returns: a future that completes once the
/// `DKIM-Signature` header has been prepended to the message. A hook that
/// signs inline returns an already-finished future, which mlua completes
/// without yielding, so `msg:dkim_sign` then works outside a coroutine too.
pub type DkimSignFuture = Pin<Box<dyn Future<Output = LuaResult<()>> + Send + 'static>>;

/// The signing function behind `msg:dkim_sign(signer)`: given the signer
/// userdata the policy passed and the message, sign and prepend.
pub type DkimSignFn = dyn Fn(&AnyUserData, &Message) -> LuaResult<DkimSignFuture> + Send + Sync;

/// Installed with `lua.set_app_data(DkimSignHook(...))` by the crate that
/// owns the signer type; `msg:dkim_sign` looks it up on every call.
#[derive(Clone)]
pub struct DkimSignHook(pub Arc<DkimSignFn>);

/// What an [`AuthHook`] method returns once it has checked its arguments:
/// the work itself, as a future that owns everything it needs (the message
/// bytes as they were at the call, the selected resolver), so DNS lookups
/// wait without holding any Lua borrow or blocking a runtime thread.
pub type AuthFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'static>>;

/// Message authentication that needs cryptography and DNS: implemented by
/// the DKIM crate, installed with `lua.set_app_data(AuthHook(...))`.
/// Errors are plain text; the Lua method prefixes them with its name.
pub trait MessageAuthenticator: Send + Sync {
    /// `msg:dkim_verify([resolver])`: one result per DKIM-Signature.
    fn dkim_verify(
        &self,
        msg: &Message,
        resolver: Option<&str>,
    ) -> Result<AuthFuture<Vec<AuthenticationResult>>, String>;

    /// `msg:arc_verify([resolver])`: the ARC chain's status.
    fn arc_verify(
        &self,
        _msg: &Message,
        _resolver: Option<&str>,
    ) -> Result<AuthFuture<AuthenticationResult>, String> {
        Err(NOT_SUPPORTED.to_string())
    }

    /// `msg:arc_seal(signer, serv_id, results[, resolver])`: add an ARC set.
    fn arc_seal(
        &self,
        _signer: &AnyUserData,
        _msg: &Message,
        _serv_id: &str,
        _results: Vec<AuthenticationResult>,
        _resolver: Option<&str>,
    ) -> Result<AuthFuture<()>, String> {
        Err(NOT_SUPPORTED.to_string())
    }
}

/// What a [`MessageAuthenticator`] method returns for a method it does not
/// provide; the Lua layer turns it into `msg:<name> is not supported by
/// Tern yet`.
pub const NOT_SUPPORTED: &str = "not supported";

fn hook_error(method: &str, err: String) -> LuaError {
    if err == NOT_SUPPORTED {
        runtime_error(format!("msg:{method} is not supported by Tern yet"))
    } else {
        runtime_error(format!("msg:{method}: {err}"))
    }
}

/// The [`MessageAuthenticator`] of a Lua state, kept in its app data.
#[derive(Clone)]
pub struct AuthHook(pub Arc<dyn MessageAuthenticator>);

fn auth_hook(lua: &Lua, method: &str) -> LuaResult<Arc<dyn MessageAuthenticator>> {
    lua.app_data_ref::<AuthHook>()
        .map(|hook| hook.0.clone())
        .ok_or_else(|| runtime_error(format!("msg:{method} is not supported by Tern yet")))
}

/// Run an authentication future and hand its value to Lua as KumoMTA's
/// JSON shape (arrays stay arrays, `nil` for absent reasons).
async fn auth_result_to_lua<T: serde::Serialize>(
    lua: Lua,
    method: &'static str,
    started: LuaResult<AuthFuture<T>>,
) -> LuaResult<LuaValue> {
    let value = started?
        .await
        .map_err(|err| runtime_error(format!("msg:{method}: {err}")))?;
    let json = serde_json::to_value(&value).map_err(|err| runtime_error(err.to_string()))?;
    json_to_lua(&lua, &json)
}

/// The `results` argument of `add_authentication_results` / `arc_seal`.
fn results_from_lua(
    lua: &Lua,
    method: &str,
    results: LuaValue,
) -> LuaResult<Vec<AuthenticationResult>> {
    match results {
        // An empty table may carry no array marker; it is still no results.
        LuaValue::Table(ref table) if table.is_empty() => Ok(Vec::new()),
        LuaValue::Table(_) => lua.from_value(results).map_err(|err| {
            runtime_error(format!(
                "msg:{method}: results must be an array of authentication results \
                 ({{method, result, reason?, method_version?, props?}}): {err}"
            ))
        }),
        other => Err(runtime_error(format!(
            "msg:{method}: results must be an array of authentication results, got {}",
            other.type_name()
        ))),
    }
}

fn runtime_error(message: impl Into<String>) -> LuaError {
    LuaError::RuntimeError(message.into())
}

/// Convert a JSON value to Lua: `null` becomes `nil`, arrays get mlua's
/// array metatable so they serialise back as arrays.
pub fn json_to_lua(lua: &Lua, value: &JsonValue) -> LuaResult<LuaValue> {
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(value, options)
}

/// Convert a Lua value to JSON: `nil` (and mlua's `NULL`) become `null`;
/// an empty table becomes `{}`.
pub fn lua_to_json(lua: &Lua, value: LuaValue) -> LuaResult<JsonValue> {
    lua.from_value(value)
}

/// An envelope address as Lua userdata: fields `user`, `domain`, `email`;
/// `tostring()` gives the address text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuaEnvelopeAddress(pub EnvelopeAddress);

impl UserData for LuaEnvelopeAddress {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("user", |_, this| Ok(this.0.user().to_string()));
        fields.add_field_method_get("domain", |_, this| Ok(this.0.domain().to_string()));
        fields.add_field_method_get("email", |_, this| Ok(this.0.email().to_string()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.email().to_string())
        });
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: AnyUserData| {
            Ok(other
                .borrow::<LuaEnvelopeAddress>()
                .map(|other| other.0 == this.0)
                .unwrap_or(false))
        });
    }
}

/// Accept a string, an EnvelopeAddress userdata, or a single-address
/// AddressHeader/mailbox userdata.
fn envelope_from_lua(value: &LuaValue) -> LuaResult<EnvelopeAddress> {
    match value {
        LuaValue::String(text) => EnvelopeAddress::parse(&text.to_str()?).map_err(runtime_error),
        LuaValue::UserData(ud) => {
            if let Ok(addr) = ud.borrow::<LuaEnvelopeAddress>() {
                return Ok(addr.0.clone());
            }
            if let Ok(mailbox) = ud.borrow::<LuaMailbox>() {
                return EnvelopeAddress::parse(mailbox.0.email().map_err(runtime_error)?)
                    .map_err(runtime_error);
            }
            if let Ok(header) = ud.borrow::<LuaAddressHeader>() {
                return EnvelopeAddress::parse(header.0.email().map_err(runtime_error)?)
                    .map_err(runtime_error);
            }
            Err(runtime_error(
                "expected an address string or EnvelopeAddress",
            ))
        }
        other => Err(runtime_error(format!(
            "expected an address string or EnvelopeAddress, got {}",
            other.type_name()
        ))),
    }
}

impl FromLua for LuaEnvelopeAddress {
    fn from_lua(value: LuaValue, _lua: &Lua) -> LuaResult<Self> {
        envelope_from_lua(&value).map(LuaEnvelopeAddress)
    }
}

/// One mailbox of an address header: `user`, `domain`, `email`, `name`;
/// `tostring()` gives `{"name":...,"address":...}`.
#[derive(Clone, Debug)]
pub struct LuaMailbox(pub Mailbox);

impl UserData for LuaMailbox {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("user", |_, this| this.0.user().map_err(runtime_error));
        fields.add_field_method_get("domain", |_, this| {
            this.0.domain().map(str::to_string).map_err(runtime_error)
        });
        fields.add_field_method_get("email", |_, this| {
            this.0.email().map(str::to_string).map_err(runtime_error)
        });
        fields.add_field_method_get("name", |_, this| Ok(this.0.name.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.to_json()));
    }
}

/// A parsed address header: the single-address fields raise an error when
/// the header holds several addresses; `list` always works.
#[derive(Clone, Debug)]
pub struct LuaAddressHeader(pub AddressHeader);

impl UserData for LuaAddressHeader {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("user", |_, this| this.0.user().map_err(runtime_error));
        fields.add_field_method_get("domain", |_, this| {
            this.0.domain().map(str::to_string).map_err(runtime_error)
        });
        fields.add_field_method_get("email", |_, this| {
            this.0.email().map(str::to_string).map_err(runtime_error)
        });
        fields.add_field_method_get("name", |_, this| {
            this.0
                .name()
                .map(|n| n.map(str::to_string))
                .map_err(runtime_error)
        });
        fields.add_field_method_get("list", |lua, this| {
            lua.create_sequence_from(this.0.list().iter().cloned().map(LuaMailbox))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.to_json()));
    }
}

fn optional_address_header(
    header: Result<Option<AddressHeader>, String>,
) -> LuaResult<Option<LuaAddressHeader>> {
    header
        .map(|h| h.map(LuaAddressHeader))
        .map_err(runtime_error)
}

/// Names from an optional Lua list; booleans inside the list are the
/// `FIRST_NAMED` flag of `import_x_headers { 'x-a', true }`.
fn names_and_flag(value: Option<LuaValue>) -> LuaResult<(Option<Vec<String>>, bool)> {
    match value {
        None | Some(LuaValue::Nil) => Ok((None, false)),
        Some(LuaValue::Boolean(flag)) => Ok((None, flag)),
        Some(LuaValue::String(name)) => Ok((Some(vec![name.to_str()?.to_string()]), false)),
        Some(LuaValue::Table(table)) => {
            let mut names = Vec::new();
            let mut flag = false;
            for item in table.sequence_values::<LuaValue>() {
                match item? {
                    LuaValue::String(name) => names.push(name.to_str()?.to_string()),
                    LuaValue::Boolean(b) => flag = b,
                    other => {
                        return Err(runtime_error(format!(
                            "header names must be strings, got {}",
                            other.type_name()
                        )));
                    }
                }
            }
            Ok((Some(names), flag))
        }
        Some(other) => Err(runtime_error(format!(
            "expected a list of header names, got {}",
            other.type_name()
        ))),
    }
}

fn parse_due(value: LuaValue) -> LuaResult<Option<SystemTime>> {
    match value {
        LuaValue::Nil => Ok(None),
        LuaValue::String(text) => {
            let text = text.to_str()?;
            let parsed = chrono::DateTime::parse_from_rfc3339(&text).map_err(|err| {
                runtime_error(format!("set_due: '{text}' is not an ISO 8601 time: {err}"))
            })?;
            let secs = parsed.timestamp();
            let nanos = parsed.timestamp_subsec_nanos();
            let due = if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos)
            } else {
                UNIX_EPOCH
            };
            Ok(Some(due))
        }
        LuaValue::Integer(secs) => Ok(Some(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))),
        LuaValue::Number(secs) if secs.is_finite() => {
            Ok(Some(UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))))
        }
        other => Err(runtime_error(format!(
            "set_due expects nil or an ISO 8601 time string, got {}",
            other.type_name()
        ))),
    }
}

/// Lets Rust functions exposed to Lua take a message argument directly
/// (`fn(msg: Message)`), e.g. `kumo.inject_message(msg)`.
impl FromLua for Message {
    fn from_lua(value: LuaValue, _lua: &Lua) -> LuaResult<Self> {
        match &value {
            LuaValue::UserData(ud) => ud
                .borrow::<Message>()
                .map(|msg| msg.clone())
                .map_err(|_| runtime_error("expected a Message object")),
            other => Err(runtime_error(format!(
                "expected a Message object, got {}",
                other.type_name()
            ))),
        }
    }
}

impl UserData for Message {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("id", |_, this, ()| Ok(this.id().to_string()));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("Message({})", this.id()))
        });

        // --- envelope ---
        methods.add_method("sender", |_, this, ()| {
            Ok(LuaEnvelopeAddress(this.sender()))
        });
        methods.add_method("set_sender", |_, this, addr: LuaValue| {
            this.set_sender(envelope_from_lua(&addr)?);
            Ok(())
        });
        methods.add_method("recipient", |lua, this, ()| {
            let mut recipients = this.recipients();
            match recipients.len() {
                0 => Ok(LuaValue::Nil),
                1 => LuaEnvelopeAddress(recipients.remove(0)).into_lua(lua),
                _ => lua
                    .create_sequence_from(recipients.into_iter().map(LuaEnvelopeAddress))?
                    .into_lua(lua),
            }
        });
        methods.add_method("recipient_list", |lua, this, ()| {
            lua.create_sequence_from(this.recipients().into_iter().map(LuaEnvelopeAddress))
        });
        methods.add_method("set_recipient", |_, this, value: LuaValue| {
            let recipients = match &value {
                LuaValue::Table(table) => table
                    .sequence_values::<LuaValue>()
                    .map(|item| envelope_from_lua(&item?))
                    .collect::<LuaResult<Vec<_>>>()?,
                single => vec![envelope_from_lua(single)?],
            };
            if recipients.is_empty() {
                return Err(runtime_error("set_recipient: the recipient list is empty"));
            }
            this.set_recipients(recipients);
            Ok(())
        });

        // --- meta ---
        methods.add_method("get_meta", |lua, this, key: String| {
            match this.get_meta(&key) {
                Some(value) => json_to_lua(lua, &value),
                None => Ok(LuaValue::Nil),
            }
        });
        methods.add_method("set_meta", |lua, this, (key, value): (String, LuaValue)| {
            let json = lua_to_json(lua, value).map_err(|err| {
                runtime_error(format!(
                    "set_meta('{key}'): value is not JSON-compatible: {err}"
                ))
            })?;
            this.set_meta(&key, json);
            Ok(())
        });

        // --- data ---
        methods.add_method("get_data", |lua, this, ()| lua.create_string(this.data()));
        methods.add_method("set_data", |_, this, data: mlua::LuaString| {
            this.set_data(bytes::Bytes::copy_from_slice(&data.as_bytes()));
            Ok(())
        });

        // --- headers ---
        methods.add_method("get_first_named_header_value", |_, this, name: String| {
            Ok(this.get_first_named_header_value(&name))
        });
        methods.add_method("get_all_named_header_values", |_, this, name: String| {
            Ok(this.get_all_named_header_values(&name))
        });
        methods.add_method("get_all_headers", |lua, this, ()| {
            let headers = this.get_all_headers();
            let result = lua.create_table_with_capacity(headers.len(), 0)?;
            for (name, value) in headers {
                result.push(lua.create_sequence_from([name, value])?)?;
            }
            Ok(result)
        });
        methods.add_method(
            "append_header",
            |_, this, (name, value, encode): (String, String, Option<bool>)| {
                this.append_header(&name, &value, encode.unwrap_or(false))
                    .map_err(runtime_error)
            },
        );
        methods.add_method(
            "prepend_header",
            |_, this, (name, value, encode): (String, String, Option<bool>)| {
                this.prepend_header(&name, &value, encode.unwrap_or(false))
                    .map_err(runtime_error)
            },
        );
        methods.add_method("remove_all_named_headers", |_, this, name: String| {
            this.remove_all_named_headers(&name);
            Ok(())
        });
        methods.add_method(
            "import_x_headers",
            |_, this, (names, first): (Option<LuaValue>, Option<bool>)| {
                let (names, flag) = names_and_flag(names)?;
                this.import_x_headers(names.as_deref(), first.unwrap_or(flag));
                Ok(())
            },
        );
        methods.add_method("remove_x_headers", |_, this, names: Option<LuaValue>| {
            let (names, _) = names_and_flag(names)?;
            this.remove_x_headers(names.as_deref());
            Ok(())
        });
        methods.add_method("import_headers", |lua, this, specs: LuaValue| {
            let specs: Vec<ImportHeaderSpec> = lua
                .from_value(specs)
                .map_err(|err| runtime_error(format!("import_headers: {err}")))?;
            this.import_headers(&specs).map_err(runtime_error)
        });
        methods.add_method("from_header", |_, this, ()| {
            optional_address_header(this.from_header())
        });
        methods.add_method("to_header", |_, this, ()| {
            optional_address_header(this.to_header())
        });
        methods.add_method("get_address_header", |_, this, name: String| {
            optional_address_header(this.get_address_header(&name))
        });

        // --- body editing ---
        methods.add_method(
            "parse_rfc3464",
            |lua, this, ()| match crate::report::parse_rfc3464(this.data())
                .map_err(runtime_error)?
            {
                Some(report) => {
                    let json = serde_json::to_value(&report)
                        .map_err(|err| runtime_error(err.to_string()))?;
                    json_to_lua(lua, &json)
                }
                None => Ok(LuaValue::Nil),
            },
        );
        methods.add_method(
            "parse_rfc5965",
            |lua, this, ()| match crate::arf::parse_rfc5965(this.data())
                .map_err(|why| runtime_error(format!("msg:parse_rfc5965: {why}")))?
            {
                Some(report) => {
                    let json = serde_json::to_value(&report)
                        .map_err(|err| runtime_error(err.to_string()))?;
                    json_to_lua(lua, &json)
                }
                None => Ok(LuaValue::Nil),
            },
        );
        methods.add_method("parse_mime", |_, this, ()| {
            Ok(crate::mimepart_lua::LuaMimePart::new(
                crate::mimepart::MimePart::parse(this.data()),
            ))
        });
        methods.add_method("append_text_plain", |_, this, text: String| {
            this.append_text_plain(&text).map_err(runtime_error)
        });
        methods.add_method("append_text_html", |_, this, html: String| {
            this.append_text_html(&html).map_err(runtime_error)
        });
        methods.add_method(
            "check_fix_conformance",
            |_, this, (checks, fixes, options): (String, String, Option<LuaValue>)| {
                // `include_encodings`/`exclude_encodings` only steer
                // `detect_encoding`, so options without it change nothing.
                let detect = match options {
                    None | Some(LuaValue::Nil) => false,
                    Some(LuaValue::Table(options)) => options
                        .get::<Option<bool>>("detect_encoding")?
                        .unwrap_or(false),
                    Some(other) => {
                        return Err(runtime_error(format!(
                            "msg:check_fix_conformance: options must be a table, got {}",
                            other.type_name()
                        )));
                    }
                };
                if detect {
                    return Err(runtime_error(
                        "msg:check_fix_conformance option detect_encoding is not supported by Tern yet",
                    ));
                }
                this.check_fix_conformance(&checks, &fixes)
                    .map_err(runtime_error)
            },
        );

        // --- scheduling and queueing ---
        methods.add_method("set_scheduling", |lua, this, value: LuaValue| {
            if value.is_nil() {
                this.set_scheduling(None);
                return Ok(LuaValue::Nil);
            }
            let json = lua_to_json(lua, value)?;
            let validated = scheduling::validate(json).map_err(runtime_error)?;
            this.set_scheduling(Some(validated.clone()));
            json_to_lua(lua, &validated)
        });
        methods.add_method(
            "import_scheduling_header",
            |lua, this, (name, remove): (String, Option<bool>)| match this
                .import_scheduling_header(&name, remove.unwrap_or(false))
                .map_err(runtime_error)?
            {
                Some(value) => json_to_lua(lua, &value),
                None => Ok(LuaValue::Nil),
            },
        );
        // Returns the due time now in force (RFC 3339, or nil for "as soon
        // as possible"), as KumoMTA's `set_due` does. A scheduling window
        // is applied later, when the queue promotes the message.
        methods.add_method("set_due", |_, this, due: LuaValue| {
            let due = parse_due(due)?;
            this.set_due(due);
            Ok(due.map(|due| {
                chrono::DateTime::<chrono::Utc>::from(due)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            }))
        });
        methods.add_method("queue_name", |_, this, ()| {
            this.queue_name().map_err(runtime_error)
        });
        methods.add_method("num_attempts", |_, this, ()| Ok(this.num_attempts()));
        methods.add_method("increment_num_attempts", |_, this, ()| {
            this.increment_num_attempts();
            Ok(())
        });

        // Memory hints: Tern keeps bodies as shared `Bytes`, so there is
        // nothing to release early; accepting the calls keeps policies that
        // use them working.
        methods.add_method("shrink", |_, _, ()| Ok(()));
        methods.add_method("shrink_data", |_, _, ()| Ok(()));
        methods.add_method("set_force_sync", |_, this, force: bool| {
            this.set_force_sync(force);
            Ok(())
        });

        // --- authentication ---
        methods.add_async_method("dkim_sign", |lua, this, signer: LuaValue| {
            // Everything borrowed from Lua is released before the future
            // runs, so nothing is held across its await.
            let msg = Message::clone(&this);
            drop(this);
            let hook = lua.app_data_ref::<DkimSignHook>().map(|hook| hook.0.clone());
            let started = match (hook, signer) {
                (None, _) => Err(runtime_error(
                    "msg:dkim_sign is not supported by Tern yet",
                )),
                (Some(hook), LuaValue::UserData(signer)) => hook(&signer, &msg),
                (Some(_), other) => Err(runtime_error(format!(
                    "msg:dkim_sign expects a signer made by kumo.dkim.rsa_sha256_signer or kumo.dkim.ed25519_signer, got {}",
                    other.type_name()
                ))),
            };
            async move { started?.await }
        });

        methods.add_async_method("save", |lua, this, ()| {
            let msg = Message::clone(&this);
            drop(this);
            let hook = lua.app_data_ref::<SaveHook>().map(|hook| hook.0.clone());
            let started = hook.map(|hook| hook(&msg));
            async move {
                match started {
                    Some(saving) => saving
                        .await
                        .map_err(|err| runtime_error(format!("msg:save: {err}"))),
                    None => Err(runtime_error(
                        "msg:save: no spool is open in this Lua state",
                    )),
                }
            }
        });

        methods.add_async_method("dkim_verify", |lua, this, resolver: Option<String>| {
            let msg = Message::clone(&this);
            drop(this);
            let started = auth_hook(&lua, "dkim_verify").and_then(|hook| {
                hook.dkim_verify(&msg, resolver.as_deref())
                    .map_err(|err| hook_error("dkim_verify", err))
            });
            auth_result_to_lua(lua, "dkim_verify", started)
        });
        methods.add_async_method("arc_verify", |lua, this, resolver: Option<String>| {
            let msg = Message::clone(&this);
            drop(this);
            let started = auth_hook(&lua, "arc_verify").and_then(|hook| {
                hook.arc_verify(&msg, resolver.as_deref())
                    .map_err(|err| hook_error("arc_verify", err))
            });
            auth_result_to_lua(lua, "arc_verify", started)
        });
        methods.add_async_method(
            "arc_seal",
            |lua,
             this,
             (signer, serv_id, results, resolver): (
                LuaValue,
                Option<String>,
                LuaValue,
                Option<String>,
            )| {
                let msg = Message::clone(&this);
                drop(this);
                let started = (|| {
                    let hook = auth_hook(&lua, "arc_seal")?;
                    let LuaValue::UserData(signer) = signer else {
                        return Err(runtime_error(format!(
                            "msg:arc_seal expects a signer made by kumo.dkim.rsa_sha256_signer or kumo.dkim.ed25519_signer, got {}",
                            signer.type_name()
                        )));
                    };
                    let serv_id = serv_id
                        .ok_or_else(|| runtime_error("msg:arc_seal: the server id is missing"))?;
                    let results = results_from_lua(&lua, "arc_seal", results)?;
                    hook.arc_seal(&signer, &msg, &serv_id, results, resolver.as_deref())
                        .map_err(|err| hook_error("arc_seal", err))
                })();
                async move {
                    started?
                        .await
                        .map_err(|err| runtime_error(format!("msg:arc_seal: {err}")))
                }
            },
        );
        methods.add_method(
            "add_authentication_results",
            |lua, this, (serv_id, results): (String, LuaValue)| {
                let results = results_from_lua(lua, "add_authentication_results", results)?;
                this.add_authentication_results(&serv_id, &results)
                    .map_err(|err| runtime_error(format!("msg:add_authentication_results: {err}")))
            },
        );
    }
}

/// The message's whole meta object as a Lua table (for callers such as log
/// hooks that hand meta to a policy function).
pub fn meta_table(lua: &Lua, msg: &Message) -> LuaResult<Table> {
    match json_to_lua(lua, &JsonValue::Object(msg.meta()))? {
        LuaValue::Table(table) => Ok(table),
        _ => lua.create_table(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_types::SpoolId;

    const DATA: &str = "From: \"Doe, J\" <j.doe@example.com>\r\nTo: a@x.com, Team: b@y.com;\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nX-Campaign-ID: 42\r\n\r\nHello\r\n";

    fn setup() -> (Lua, Message) {
        let lua = Lua::new();
        let msg = Message::new(
            SpoolId::new(),
            EnvelopeAddress::parse("sender@example.com").unwrap(),
            vec![EnvelopeAddress::parse("rcpt@Example.NET").unwrap()],
            serde_json::from_str(r#"{"tenant": "acme", "nothing": null}"#).unwrap(),
            Bytes::from_static(DATA.as_bytes()),
        );
        lua.globals().set("msg", msg.clone()).unwrap();
        (lua, msg)
    }

    fn run(lua: &Lua, code: &str) {
        if let Err(err) = lua.load(code).exec() {
            panic!("lua failed: {err}\n{code}");
        }
    }

    #[test]
    fn envelope_methods() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            assert(msg:id() == msg:id() and #msg:id() == 32)
            local s = msg:sender()
            assert(s.user == 'sender' and s.domain == 'example.com' and s.email == 'sender@example.com')
            assert(tostring(s) == 'sender@example.com')
            assert(msg:recipient().domain == 'Example.NET')
            assert(#msg:recipient_list() == 1)
            msg:set_sender('other@example.org')
            assert(msg:sender().domain == 'example.org')
            msg:set_recipient({'a@one.com', msg:sender()})
            local r = msg:recipient()
            assert(#r == 2 and r[1].email == 'a@one.com' and r[2].email == 'other@example.org')
            msg:set_recipient(msg:recipient_list()[2])
            assert(msg:recipient().email == 'other@example.org')
            local ok, err = pcall(function() msg:set_sender('not an address') end)
            assert(not ok and tostring(err):find('missing'))
            "#,
        );
        assert_eq!(msg.sender().email(), "other@example.org");
    }

    #[test]
    fn meta_round_trips_json() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            assert(msg:get_meta('tenant') == 'acme')
            assert(msg:get_meta('missing') == nil)
            msg:set_meta('n', 123)
            msg:set_meta('obj', { key = 'value', list = {1, 2, 3}, empty = {} })
            msg:set_meta('flag', true)
            local obj = msg:get_meta('obj')
            assert(obj.key == 'value' and obj.list[3] == 3)
            msg:set_meta('nested_null', { a = 1 })
            msg:set_meta('n2', nil)
            assert(msg:get_meta('n2') == nil)
            assert(msg:queue_name() == 'acme@example.net')
            "#,
        );
        assert_eq!(msg.get_meta("n"), Some(serde_json::json!(123)));
        assert_eq!(
            msg.get_meta("obj"),
            Some(serde_json::json!({"key": "value", "list": [1, 2, 3], "empty": {}}))
        );
        assert_eq!(msg.get_meta("flag"), Some(serde_json::json!(true)));
        let err = lua
            .load("msg:set_meta('f', function() end)")
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("not JSON-compatible"), "{err}");
    }

    #[test]
    fn header_methods() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            assert(msg:get_first_named_header_value('subject') == 'café')
            assert(msg:get_first_named_header_value('nope') == nil)
            local all = msg:get_all_headers()
            assert(#all == 4 and all[1][1] == 'From' and all[4][2] == '42')
            msg:append_header('X-Tracking', 'abc')
            msg:prepend_header('X-First', 'ü', true)
            assert(msg:get_first_named_header_value('X-First') == 'ü')
            assert(#msg:get_all_named_header_values('x-tracking') == 1)
            msg:import_x_headers()
            assert(msg:get_meta('x_campaign_id') == '42')
            assert(msg:get_meta('x_tracking') == 'abc')
            msg:import_x_headers({'subject', true})
            assert(msg:get_meta('subject') == 'café')
            msg:remove_x_headers({'x-first'})
            assert(msg:get_first_named_header_value('X-First') == nil)
            msg:remove_all_named_headers('X-Tracking')
            msg:remove_x_headers()
            assert(msg:get_first_named_header_value('X-Campaign-ID') == nil)
            msg:import_headers({ { name = 'Subject', target = 'subj', remove = true } })
            assert(msg:get_meta('subj') == 'café')
            assert(msg:get_first_named_header_value('Subject') == nil)
            local ok, err = pcall(function() msg:append_header('Bad Name', 'x') end)
            assert(not ok and tostring(err):find('invalid character'))
            "#,
        );
        let data = msg.data();
        assert!(data.ends_with(b"\r\n\r\nHello\r\n"));
        assert!(data.starts_with(b"From:"));
    }

    #[test]
    fn address_header_objects() {
        let (lua, _msg) = setup();
        run(
            &lua,
            r#"
            local from = msg:from_header()
            assert(from.domain == 'example.com')
            assert(from.user == 'j.doe')
            assert(from.email == 'j.doe@example.com')
            assert(from.name == 'Doe, J')
            assert(tostring(from) == '[{"name":"Doe, J","address":"j.doe@example.com"}]')
            local to = msg:to_header()
            local ok, err = pcall(function() return to.domain end)
            assert(not ok and tostring(err):find('2 addresses'))
            local list = to.list
            assert(#list == 2 and list[1].email == 'a@x.com' and list[2].domain == 'y.com')
            assert(list[1].name == nil)
            assert(tostring(list[1]) == '{"name":null,"address":"a@x.com"}')
            assert(msg:get_address_header('Cc') == nil)
            msg:set_sender(from)
            assert(msg:sender().email == 'j.doe@example.com')
            "#,
        );
    }

    #[test]
    fn data_scheduling_and_counters() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            assert(msg:get_data():find('Hello'))
            msg:set_data('Subject: new\r\n\r\nbody\r\n')
            assert(msg:get_first_named_header_value('Subject') == 'new')
            local s = msg:set_scheduling { dow = 'Mon,Wed', tz = 'America/Phoenix', start = '09:00:00', ['end'] = '17:00:00' }
            assert(s.dow == 'Mon,Wed' and s.first_attempt == nil)
            local ok, err = pcall(function() msg:set_scheduling { dow = 'Mon' } end)
            assert(not ok and tostring(err):find('together'))
            msg:set_scheduling(nil)
            assert(msg:import_scheduling_header('X-Sched') == nil)
            assert(msg:num_attempts() == 0)
            msg:increment_num_attempts()
            assert(msg:num_attempts() == 1)
            assert(msg:set_due('2030-01-02T03:04:05+01:00') == '2030-01-02T02:04:05Z')
            assert(msg:set_due('2030-01-02T03:04:05Z') == '2030-01-02T03:04:05Z')
            msg:shrink()
            msg:set_force_sync(true)
            "#,
        );
        assert_eq!(msg.scheduling(), None);
        assert_eq!(
            msg.due(),
            Some(UNIX_EPOCH + Duration::from_secs(1_893_553_445))
        );
        assert!(msg.force_sync());
        run(&lua, "assert(msg:set_due(nil) == nil)");
        assert_eq!(msg.due(), None);
        assert!(lua.load("msg:set_due('tomorrow')").exec().is_err());
    }

    #[test]
    fn body_editing_and_conformance() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            local failed = msg:check_fix_conformance('MISSING_DATE_HEADER', '')
            assert(failed == 'Message has conformance issues: MISSING_DATE_HEADER', failed)
            assert(msg:check_fix_conformance('', 'MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION') == nil)
            assert(msg:get_first_named_header_value('Date') ~= nil)
            assert(msg:get_first_named_header_value('MIME-Version') == '1.0')
            local ok, err = pcall(function() msg:check_fix_conformance('NOPE', '') end)
            assert(not ok and tostring(err):find("unknown conformance label 'NOPE'"))
            ok, err = pcall(function() msg:check_fix_conformance('', '', { detect_encoding = true }) end)
            assert(not ok and tostring(err):find('detect_encoding is not supported by Tern yet'), err)
            ok, err = pcall(function() msg:check_fix_conformance('', '', 'utf-8') end)
            assert(not ok and tostring(err):find('options must be a table'), err)
            assert(msg:check_fix_conformance('', '', { detect_encoding = false, include_encodings = {} }) == nil)
            assert(msg:append_text_plain('-- footer\r\n') == true)
            assert(msg:get_data():find('Hello\r\n%-%- footer\r\n$'))
            assert(msg:append_text_html('<img>') == false)
            "#,
        );
        assert!(msg.data().ends_with(b"Hello\r\n-- footer\r\n"));
    }

    #[test]
    fn parse_mime_returns_a_detached_tree() {
        let (lua, msg) = setup();
        let before = msg.data();
        run(
            &lua,
            r#"
            local mime = msg:parse_mime()
            assert(tostring(mime) == msg:get_data())
            assert(mime.headers:subject() == 'café')
            local s = mime:get_simple_structure()
            assert(s.text_part.body == 'Hello\r\n')
            s.text_part.body = 'Changed\r\n'
            assert(msg:get_data():find('Hello'), 'the message is unchanged until set_data')
            msg:set_data(tostring(mime))
            assert(msg:get_data():find('Changed\r\n$'))
            assert(msg:get_first_named_header_value('Subject') == 'café')
            "#,
        );
        assert_ne!(msg.data(), before);
        assert!(msg.data().ends_with(b"\r\n\r\nChanged\r\n"));
    }

    #[test]
    fn parse_rfc3464_from_lua() {
        let (lua, msg) = setup();
        run(&lua, "assert(msg:parse_rfc3464() == nil)");
        msg.set_data(Bytes::from_static(
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; a@example.net\r\nAction: Failed\r\nStatus: 5.1.1 (no such user)\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\nFinal-Recipient: rfc822; b@example.net\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n--b--\r\n",
        ));
        run(
            &lua,
            r#"
            local report = msg:parse_rfc3464()
            assert(report.per_message.reporting_mta.name == 'mx.example.com')
            assert(#report.per_recipient == 2)
            local first = report.per_recipient[1]
            assert(first.action == 'failed' and first.status.class == 5 and first.status.detail == 1)
            assert(first.final_recipient.recipient_type == 'rfc822' and first.final_recipient.recipient == 'a@example.net')
            assert(first.remote_mta.name == 'mx.example.net')
            assert(first.diagnostic_code.diagnostic == '550 5.1.1 unknown')
            assert(first.original_recipient == nil)
            assert(report.per_recipient[2].status.class == 4)
            "#,
        );
        msg.set_data(Bytes::from_static(
            b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nAction: failed\r\n",
        ));
        let err = lua.load("msg:parse_rfc3464()").exec().unwrap_err();
        assert!(
            err.to_string().contains("malformed RFC 3464 report"),
            "{err}"
        );
    }

    #[test]
    fn parse_rfc5965_from_lua() {
        use base64::Engine;
        let (lua, msg) = setup();
        run(&lua, "assert(msg:parse_rfc5965() == nil)");
        let trace = base64::engine::general_purpose::STANDARD
            .encode(r#"{"_@_":"\\_/","recipient":"alice@mailbox.example"}"#);
        let original = format!("X-KumoRef: {trace}\r\nSubject: offers\r\n\r\nBuy now.\r\n");
        msg.set_data(crate::arf::example_report(&original).into());
        run(
            &lua,
            r#"
            local report = msg:parse_rfc5965()
            assert(report.feedback_type == 'abuse' and report.user_agent == 'MailboxFBL/3.2')
            assert(report.version == '1' and report.incidents == 3)
            assert(report.original_mail_from == 'bounces+42@news.example.org')
            assert(#report.original_rcpto_to == 1 and report.original_rcpto_to[1] == 'alice@mailbox.example')
            assert(report.reporting_mta.mta_type == 'dns' and report.reporting_mta.name == 'mx1.mailbox.example')
            assert(report.arrival_date == '2025-01-14T14:30:00Z', report.arrival_date)
            assert(report.original_envelope_id == nil)
            assert(#report.reported_uri == 2)
            assert(report.extensions['x-complaint-source'][1] == 'spam-button')
            assert(report.supplemental_trace.recipient == 'alice@mailbox.example')
            assert(report.supplemental_trace['_@_'] == nil)
            assert(report.original_message:find('^X%-KumoRef: '))
            "#,
        );
        msg.set_data(
            crate::arf::example_report(&original)
                .replacen("User-Agent: MailboxFBL/3.2\r\n", "", 1)
                .into(),
        );
        let err = lua
            .load("msg:parse_rfc5965()")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("msg:parse_rfc5965: malformed RFC 5965 report: User-Agent is missing"),
            "{err}"
        );
    }

    /// Every message method of the spec (§5.1) exists: it either works
    /// (exercised by the tests above).
    #[test]
    fn every_documented_method_exists() {
        let (lua, _msg) = setup();
        run(
            &lua,
            r#"
            local names = {
              'id', 'sender', 'set_sender', 'recipient', 'recipient_list', 'set_recipient',
              'get_meta', 'set_meta', 'get_data', 'set_data',
              'get_first_named_header_value', 'get_all_named_header_values', 'get_all_headers',
              'from_header', 'to_header', 'get_address_header', 'append_header', 'prepend_header',
              'remove_all_named_headers', 'import_x_headers', 'import_headers', 'remove_x_headers',
              'check_fix_conformance', 'dkim_sign', 'dkim_verify', 'arc_verify', 'arc_seal',
              'add_authentication_results', 'set_scheduling', 'import_scheduling_header', 'set_due',
              'queue_name', 'num_attempts', 'increment_num_attempts', 'parse_mime', 'parse_rfc3464',
              'parse_rfc5965', 'append_text_plain', 'append_text_html', 'save', 'shrink',
              'shrink_data', 'set_force_sync',
            }
            for _, name in ipairs(names) do
              assert(type(msg[name]) == 'function', name)
            end
            msg:shrink_data()
            "#,
        );
    }

    #[test]
    fn save_goes_through_the_installed_hook() {
        let (lua, msg) = setup();
        let err = lua.load("msg:save()").exec().unwrap_err().to_string();
        assert!(err.contains("msg:save: no spool is open"), "{err}");

        let saved = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = saved.clone();
        lua.set_app_data(SaveHook(Arc::new(move |m: &Message| {
            record.lock().unwrap().push(m.id().to_string());
            let fail = m.get_meta_str("x_fail").is_some();
            Box::pin(async move {
                if fail {
                    Err("disk on fire".to_string())
                } else {
                    Ok(())
                }
            })
        })));
        lua.load("msg:save()").exec().unwrap();
        assert_eq!(*saved.lock().unwrap(), [msg.id().to_string()]);
        let err = lua
            .load("msg:set_meta('x_fail', 'yes') msg:save()")
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("msg:save: disk on fire"), "{err}");
    }

    #[test]
    fn message_passes_back_to_rust() {
        let (lua, msg) = setup();
        let same = lua
            .create_function(|_, m: Message| Ok(m.id().to_string()))
            .unwrap();
        lua.globals().set("id_of", same).unwrap();
        let id: String = lua.load("return id_of(msg)").eval().unwrap();
        assert_eq!(id, msg.id().to_string());
        let err = lua.load("return id_of('x')").eval::<String>().unwrap_err();
        assert!(err.to_string().contains("expected a Message"), "{err}");
    }

    /// A stand-in signer type, as the DKIM crate would define one.
    struct FakeSigner(&'static str);
    impl UserData for FakeSigner {}

    #[test]
    fn dkim_sign_without_hook_is_unsupported() {
        let (lua, _msg) = setup();
        lua.globals().set("signer", FakeSigner("x")).unwrap();
        let err = lua.load("msg:dkim_sign(signer)").exec().unwrap_err();
        assert!(
            err.to_string()
                .contains("msg:dkim_sign is not supported by Tern yet"),
            "{err}"
        );
    }

    #[test]
    fn dkim_sign_calls_the_installed_hook() {
        let (lua, msg) = setup();
        lua.set_app_data(DkimSignHook(Arc::new(|signer, msg| {
            let header = signer
                .borrow::<FakeSigner>()
                .map_err(|_| runtime_error("not a FakeSigner"))?
                .0;
            let mut data = header.as_bytes().to_vec();
            data.extend_from_slice(&msg.data());
            msg.set_data(bytes::Bytes::from(data));
            Ok(Box::pin(async { Ok(()) }))
        })));
        lua.globals()
            .set("signer", FakeSigner("DKIM-Signature: fake\r\n"))
            .unwrap();
        // A ready future completes without a coroutine: plain exec works.
        run(&lua, "msg:dkim_sign(signer)");
        assert!(msg.data().starts_with(b"DKIM-Signature: fake\r\nFrom: "));
        let err = lua.load("msg:dkim_sign('nope')").exec().unwrap_err();
        assert!(
            err.to_string()
                .contains("expects a signer made by kumo.dkim.rsa_sha256_signer"),
            "{err}"
        );
        let err = lua.load("msg:dkim_sign(msg)").exec().unwrap_err();
        assert!(err.to_string().contains("not a FakeSigner"), "{err}");
    }

    #[test]
    fn dkim_sign_hook_can_finish_later() {
        // A hook whose future is pending first (as with a signing pool)
        // works when the method is called from an async context.
        let (lua, msg) = setup();
        lua.set_app_data(DkimSignHook(Arc::new(|_signer, msg| {
            let msg = msg.clone();
            let mut polled_once = false;
            Ok(Box::pin(std::future::poll_fn(move |cx| {
                if !polled_once {
                    polled_once = true;
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                msg.set_data(bytes::Bytes::from_static(b"X-Later: 1\r\n\r\nbody\r\n"));
                std::task::Poll::Ready(Ok(()))
            })))
        })));
        lua.globals().set("signer", FakeSigner("x")).unwrap();
        let chunk = lua.load("msg:dkim_sign(signer)");
        let mut future = std::pin::pin!(chunk.exec_async());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let result = loop {
            if let std::task::Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                break result;
            }
        };
        result.unwrap();
        assert_eq!(
            msg.get_first_named_header_value("X-Later").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn add_authentication_results_prepends_the_header() {
        let (lua, msg) = setup();
        run(
            &lua,
            r#"
            msg:add_authentication_results('mx.example.com', {
              { method = 'dkim', result = 'pass', props = { ['header.d'] = 'example.com', ['header.b'] = 'ab/cd+ef' } },
              { method = 'spf', result = 'fail', reason = 'not listed' },
            })
            msg:add_authentication_results('mx.example.com', {})
            local ok, err = pcall(function()
              msg:add_authentication_results('mx', { { method = 'dkim', result = 'pass', bogus = 1 } })
            end)
            assert(not ok and tostring(err):find('msg:add_authentication_results: results must be'), err)
            ok, err = pcall(function()
              msg:add_authentication_results('mx', { { method = 'dkim', result = 'pass', reason = 'a\r\nBcc: x' } })
            end)
            assert(not ok and tostring(err):find('line break'), err)
            ok, err = pcall(function() msg:add_authentication_results('mx', 'pass') end)
            assert(not ok and tostring(err):find('got string'), err)
            "#,
        );
        let data = String::from_utf8(msg.data().to_vec()).unwrap();
        assert!(
            data.starts_with(
                "Authentication-Results: mx.example.com; none\r\n\
                 Authentication-Results: mx.example.com;\r\n\tdkim=pass\r\n\
                 \theader.b=\"ab/cd+ef\"\r\n\theader.d=example.com;\r\n\
                 \tspf=fail reason=\"not listed\"\r\nFrom: "
            ),
            "{data}"
        );
        assert_eq!(
            msg.get_all_named_header_values("Authentication-Results")
                .len(),
            2
        );
    }

    /// A stand-in authenticator, as the DKIM crate would install one.
    struct FakeAuthenticator;
    impl MessageAuthenticator for FakeAuthenticator {
        fn dkim_verify(
            &self,
            msg: &Message,
            resolver: Option<&str>,
        ) -> Result<AuthFuture<Vec<AuthenticationResult>>, String> {
            if resolver == Some("missing") {
                return Err("no resolver named 'missing'".to_string());
            }
            let mut result = AuthenticationResult::new("dkim", "pass");
            result.props.insert(
                "header.d".into(),
                msg.from_header().unwrap().unwrap().domain().unwrap().into(),
            );
            result
                .props
                .insert("resolver".into(), resolver.unwrap_or("default").into());
            Ok(Box::pin(async move { Ok(vec![result]) }))
        }
    }

    #[test]
    fn authentication_methods_without_hook_are_unsupported() {
        let (lua, _msg) = setup();
        lua.globals().set("signer", FakeSigner("x")).unwrap();
        for call in [
            "msg:dkim_verify()",
            "msg:arc_verify()",
            "msg:arc_seal(signer, 'mx', {})",
        ] {
            let name = call[4..].split('(').next().unwrap();
            let err = lua.load(call).exec().unwrap_err().to_string();
            assert!(
                err.contains(&format!("msg:{name} is not supported by Tern yet")),
                "{err}"
            );
        }
    }

    #[test]
    fn dkim_verify_calls_the_installed_hook() {
        let (lua, msg) = setup();
        lua.set_app_data(AuthHook(Arc::new(FakeAuthenticator)));
        lua.globals().set("signer", FakeSigner("x")).unwrap();
        run(
            &lua,
            r#"
            local results = msg:dkim_verify()
            assert(#results == 1 and results[1].result == 'pass' and results[1].reason == nil)
            assert(results[1].props['header.d'] == 'example.com')
            assert(results[1].props.resolver == 'default')
            assert(msg:dkim_verify('alt')[1].props.resolver == 'alt')
            local ok, err = pcall(function() msg:dkim_verify('missing') end)
            assert(not ok and tostring(err):find("msg:dkim_verify: no resolver named 'missing'"), err)
            -- The results go straight back into a header.
            msg:add_authentication_results('mx', results)
            -- An authenticator without ARC support says so.
            ok, err = pcall(function() msg:arc_verify() end)
            assert(not ok and tostring(err):find('msg:arc_verify is not supported by Tern yet'), err)
            ok, err = pcall(function() msg:arc_seal(signer, 'mx', results) end)
            assert(not ok and tostring(err):find('msg:arc_seal is not supported by Tern yet'), err)
            ok, err = pcall(function() msg:arc_seal('nope', 'mx', results) end)
            assert(not ok and tostring(err):find('expects a signer'), err)
            "#,
        );
        assert!(
            msg.data()
                .starts_with(b"Authentication-Results: mx;\r\n\tdkim=pass\r\n\theader.d=example.com\r\n\tresolver=default\r\n")
        );
    }

    #[test]
    fn json_null_becomes_nil() {
        let lua = Lua::new();
        let value = json_to_lua(&lua, &serde_json::json!({"a": null, "b": [1, null]})).unwrap();
        let LuaValue::Table(table) = value else {
            panic!("not a table")
        };
        assert!(table.get::<LuaValue>("a").unwrap().is_nil());
        let inner: Table = table.get("b").unwrap();
        assert!(inner.get::<LuaValue>(2).unwrap().is_nil());
    }
}
