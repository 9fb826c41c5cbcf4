//! Lua bindings for [`crate::mimepart`]: the `kumo.mimepart` module and
//! the MimePart, HeaderMap, Header and builder objects.
//!
//! A MimePart userdata is a handle: the tree it belongs to (shared behind a
//! mutex) plus the path of child indexes to its part. Parts obtained from
//! `get_simple_structure`, `child_parts` or the `headers` field therefore
//! edit the same tree, so changing `structure.text_part.body` changes what
//! `tostring(root)` renders. Headers returned by a HeaderMap are copies;
//! changes go through the HeaderMap's methods.
//!
//! [`register`] adds the `kumo.mimepart` table; its signature matches
//! `tern_policy::LuaRegistrar`'s blanket implementation for functions, so
//! the server installs it with `Arc::new(tern_message::mimepart_lua::register)`.

use crate::mimepart::{
    Address, AttachmentOptions, DecodedBody, Header, Mailbox, MessageBuilder, MimeParams, MimePart,
    parse_address_list, render_address_list,
};
use bytes::Bytes;
use mlua::{
    Error as LuaError, Lua, LuaSerdeExt, MetaMethod, Result as LuaResult, Table, UserData,
    UserDataFields, UserDataMethods, UserDataRef, Value as LuaValue,
};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;

fn runtime_error(message: impl Into<String>) -> LuaError {
    LuaError::RuntimeError(message.into())
}

fn to_lua<T: Serialize>(lua: &Lua, value: &T) -> LuaResult<LuaValue> {
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(value, options)
}

/// A MimePart as Lua sees it: a handle to one part of a shared tree.
#[derive(Clone)]
pub struct LuaMimePart {
    root: Arc<Mutex<MimePart>>,
    path: Vec<usize>,
}

impl LuaMimePart {
    /// A handle to the root of a new tree.
    pub fn new(part: MimePart) -> Self {
        Self {
            root: Arc::new(Mutex::new(part)),
            path: Vec::new(),
        }
    }

    fn relative(&self, rel: &[usize]) -> Self {
        let mut path = self.path.clone();
        path.extend_from_slice(rel);
        Self {
            root: self.root.clone(),
            path,
        }
    }

    fn gone() -> LuaError {
        runtime_error("this MIME part no longer exists in its tree")
    }

    fn read<R>(&self, f: impl FnOnce(&MimePart) -> Result<R, String>) -> LuaResult<R> {
        let root = self.root.lock();
        let part = root.part(&self.path).ok_or_else(Self::gone)?;
        f(part).map_err(runtime_error)
    }

    fn write<R>(&self, f: impl FnOnce(&mut MimePart) -> Result<R, String>) -> LuaResult<R> {
        let mut root = self.root.lock();
        let part = root.part_mut(&self.path).ok_or_else(Self::gone)?;
        f(part).map_err(runtime_error)
    }

    /// A copy of the referenced part (for appending it elsewhere).
    pub fn snapshot(&self) -> LuaResult<MimePart> {
        self.read(|part| Ok(part.clone()))
    }

    fn id(&self) -> String {
        let mut id = "0".to_string();
        for idx in &self.path {
            id.push('.');
            id.push_str(&idx.to_string());
        }
        id
    }
}

impl UserData for LuaMimePart {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("body", |lua, this| {
            let body = this.read(|part| part.body())?;
            match body {
                DecodedBody::Text(text) => lua.create_string(text),
                DecodedBody::Binary(bytes) => lua.create_string(bytes),
            }
        });
        fields.add_field_method_set("body", |_, this, content: mlua::LuaString| {
            let content = content.as_bytes().to_vec();
            this.write(|part| part.replace_body(&content, None))
        });
        fields.add_field_method_get("raw_body", |lua, this| {
            lua.create_string(this.read(|part| Ok(part.raw_body()))?)
        });
        fields.add_field_method_get("headers", |_, this| {
            this.read(|_| Ok(()))?;
            Ok(LuaHeaderMap(this.clone()))
        });
        fields.add_field_method_get("id", |_, this| Ok(this.id()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |lua, this, ()| {
            lua.create_string(this.read(|part| Ok(part.to_bytes()))?)
        });
        methods.add_method("append_part", |_, this, other: UserDataRef<LuaMimePart>| {
            // Copy first: `other` may share this part's tree (and its lock).
            let child = other.snapshot()?;
            this.write(|part| part.append_part(child))
        });
        methods.add_method(
            "replace_body",
            |_, this, (content, content_type): (mlua::LuaString, Option<String>)| {
                let content = content.as_bytes().to_vec();
                this.write(|part| part.replace_body(&content, content_type.as_deref()))
            },
        );
        for name in ["child_parts", "parts"] {
            methods.add_method(name, |lua, this, ()| {
                let count = this.read(|part| Ok(part.children().len()))?;
                lua.create_sequence_from((0..count).map(|idx| this.relative(&[idx])))
            });
        }
        methods.add_method("rebuild", |_, this, ()| {
            Ok(LuaMimePart::new(this.read(|part| part.rebuild())?))
        });
        methods.add_method("get_simple_structure", |lua, this, ()| {
            let structure = this.read(|part| Ok(part.simple_structure()))?;
            let result = lua.create_table()?;
            for (key, path) in [
                ("text_part", &structure.text_part),
                ("html_part", &structure.html_part),
                ("amp_html_part", &structure.amp_html_part),
            ] {
                if let Some(path) = path {
                    result.set(key, this.relative(path))?;
                }
            }
            result.set("header_part", this.relative(&structure.header_part))?;
            let attachments = lua.create_table()?;
            for info in structure.attachments {
                let entry = lua.create_table()?;
                entry.set("file_name", info.file_name)?;
                entry.set("inline", info.inline)?;
                entry.set("content_id", info.content_id)?;
                entry.set("content_type", info.content_type)?;
                entry.set("part", this.relative(&info.path))?;
                attachments.push(entry)?;
            }
            result.set("attachments", attachments)?;
            Ok(result)
        });
    }
}

/// How a typed HeaderMap accessor interprets its header.
#[derive(Clone, Copy)]
enum Kind {
    Unstructured,
    MailboxList,
    AddressList,
    Mailbox,
    MessageId,
    MessageIdList,
    MimeParams,
}

/// The typed accessors: `headers:<method>()` and `headers:set_<method>(v)`.
const TYPED_ACCESSORS: &[(&str, &str, Kind)] = &[
    ("from", "From", Kind::MailboxList),
    ("to", "To", Kind::AddressList),
    ("cc", "Cc", Kind::AddressList),
    ("bcc", "Bcc", Kind::AddressList),
    ("reply_to", "Reply-To", Kind::AddressList),
    ("sender", "Sender", Kind::Mailbox),
    ("subject", "Subject", Kind::Unstructured),
    ("comments", "Comments", Kind::Unstructured),
    ("mime_version", "Mime-Version", Kind::Unstructured),
    ("message_id", "Message-ID", Kind::MessageId),
    ("content_id", "Content-ID", Kind::MessageId),
    ("references", "References", Kind::MessageIdList),
    ("content_type", "Content-Type", Kind::MimeParams),
    (
        "content_disposition",
        "Content-Disposition",
        Kind::MimeParams,
    ),
    (
        "content_transfer_encoding",
        "Content-Transfer-Encoding",
        Kind::MimeParams,
    ),
    ("resent_from", "Resent-From", Kind::MailboxList),
    ("resent_to", "Resent-To", Kind::AddressList),
    ("resent_cc", "Resent-Cc", Kind::AddressList),
    ("resent_bcc", "Resent-Bcc", Kind::AddressList),
    ("resent_sender", "Resent-Sender", Kind::Mailbox),
];

/// The kind `header.value` uses for a header name.
fn kind_for_name(name: &str) -> Kind {
    TYPED_ACCESSORS
        .iter()
        .find(|(_, header, _)| header.eq_ignore_ascii_case(name))
        .map_or(Kind::Unstructured, |(_, _, kind)| *kind)
}

fn header_value(lua: &Lua, header: &Header, kind: Kind) -> LuaResult<LuaValue> {
    let fail = |err: String| runtime_error(err);
    match kind {
        Kind::Unstructured => lua
            .create_string(header.unstructured())
            .map(LuaValue::String),
        Kind::MailboxList => to_lua(lua, &header.mailbox_list().map_err(fail)?),
        Kind::AddressList => to_lua(lua, &header.address_list().map_err(fail)?),
        Kind::Mailbox => to_lua(lua, &header.mailbox().map_err(fail)?),
        Kind::MessageId => to_lua(lua, &header.message_id().map_err(fail)?),
        Kind::MessageIdList => to_lua(lua, &header.message_id_list().map_err(fail)?),
        Kind::MimeParams => to_lua(lua, &header.mime_params().map_err(fail)?),
    }
}

/// Build the header a typed setter stores from a string or a table.
fn typed_header(lua: &Lua, name: &str, kind: Kind, value: LuaValue) -> Result<Header, String> {
    const EOL: &str = "\r\n";
    let invalid = |why: String| format!("invalid header: {name}: {why}");
    let addresses_ok = |list: &[Address]| -> Result<(), String> {
        let groups = list.iter().any(|a| matches!(a, Address::Group(_)));
        match kind {
            Kind::MailboxList if groups => Err(invalid("groups are not allowed here".into())),
            Kind::Mailbox if groups || list.len() != 1 => {
                Err(invalid("exactly one mailbox is required".into()))
            }
            _ => Ok(()),
        }
    };
    match (kind, value) {
        (Kind::Unstructured, LuaValue::String(text)) => {
            Header::new_encoded(name, &text.to_str().map_err(|e| e.to_string())?, EOL)
        }
        (Kind::MessageId, LuaValue::String(text)) => {
            let text = text.to_str().map_err(|e| e.to_string())?.trim().to_string();
            let header = Header::new_raw(name, &text, EOL)?;
            header.message_id()?;
            Ok(header)
        }
        (Kind::MessageIdList, value) => {
            let ids: Vec<String> = match value {
                LuaValue::String(text) => {
                    let text = text.to_str().map_err(|e| e.to_string())?.to_string();
                    let header = Header::new_raw(name, text.trim(), EOL)?;
                    header.message_id_list()?
                }
                other => lua
                    .from_value(other)
                    .map_err(|err| invalid(format!("expected a list of ids: {err}")))?,
            };
            let rendered: Vec<String> = ids.iter().map(|id| format!("<{id}>")).collect();
            let header = Header::new_encoded(name, &rendered.join(" "), EOL)?;
            header.message_id_list()?;
            Ok(header)
        }
        (Kind::MimeParams, value) => {
            let params: MimeParams = match value {
                LuaValue::String(text) => MimeParams::parse(&text.as_bytes())?,
                other => lua
                    .from_value(other)
                    .map_err(|err| invalid(format!("expected {{value, parameters}}: {err}")))?,
            };
            if params.value.is_empty() || params.value.contains(char::is_whitespace) {
                return Err(invalid(format!("'{}' is not a MIME value", params.value)));
            }
            Header::new_raw(name, &params.render(EOL), EOL)
        }
        (Kind::MailboxList | Kind::AddressList | Kind::Mailbox, value) => {
            let list: Vec<Address> = match value {
                LuaValue::String(text) => parse_address_list(&text.as_bytes()).map_err(invalid)?,
                LuaValue::Table(table) if matches!(kind, Kind::Mailbox) => {
                    let mailbox: Mailbox = lua
                        .from_value(LuaValue::Table(table))
                        .map_err(|err| invalid(format!("expected a mailbox: {err}")))?;
                    vec![Address::Mailbox(mailbox)]
                }
                other => lua
                    .from_value(other)
                    .map_err(|err| invalid(format!("expected an address list: {err}")))?,
            };
            addresses_ok(&list)?;
            Header::new_raw(name, &render_address_list(&list, EOL)?, EOL)
        }
        (_, other) => Err(invalid(format!(
            "expected a string, got {}",
            other.type_name()
        ))),
    }
}

/// The header map of one part (`mimepart.headers`).
#[derive(Clone)]
pub struct LuaHeaderMap(LuaMimePart);

impl UserData for LuaHeaderMap {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |lua, this, ()| {
            lua.create_string(this.0.read(|part| Ok(part.header_bytes()))?)
        });
        // `part:headers()` as well as `part.headers`: calling the map
        // returns it.
        methods.add_meta_function(
            MetaMethod::Call,
            |_, (this, _rest): (LuaValue, mlua::MultiValue)| Ok(this),
        );
        methods.add_method("iter", |lua, this, name: Option<String>| {
            let headers: Vec<Header> = this.0.read(|part| {
                Ok(part
                    .headers()
                    .iter()
                    .filter(|h| name.as_deref().is_none_or(|n| h.is_named(n)))
                    .cloned()
                    .collect())
            })?;
            let mut remaining = headers.into_iter();
            lua.create_function_mut(move |_, ()| Ok(remaining.next().map(LuaHeader)))
        });
        methods.add_method("get_first_named", |_, this, name: String| {
            this.0
                .read(|part| Ok(part.get_first(&name).cloned().map(LuaHeader)))
        });
        methods.add_method("append", |_, this, (name, value): (String, String)| {
            let header = Header::new_encoded(&name, &value, "\r\n").map_err(runtime_error)?;
            this.0.write(|part| {
                part.append_header(header);
                Ok(())
            })
        });
        methods.add_method("prepend", |_, this, (name, value): (String, String)| {
            let header = Header::new_encoded(&name, &value, "\r\n").map_err(runtime_error)?;
            this.0.write(|part| {
                part.prepend_header(header);
                Ok(())
            })
        });
        methods.add_method("remove_all_named", |_, this, name: String| {
            this.0.write(|part| {
                part.remove_all_named(&name);
                Ok(())
            })
        });
        for (method, header_name, kind) in TYPED_ACCESSORS {
            let (header_name, kind) = (*header_name, *kind);
            methods.add_method(*method, move |lua, this, ()| {
                let header = this
                    .0
                    .read(|part| Ok(part.get_first(header_name).cloned()))?;
                match header {
                    Some(header) => header_value(lua, &header, kind),
                    None => Ok(LuaValue::Nil),
                }
            });
            let setter = format!("set_{method}");
            methods.add_method(setter.clone(), move |lua, this, value: LuaValue| {
                let header = typed_header(lua, header_name, kind, value)
                    .map_err(|err| runtime_error(format!("headers:{setter}: {err}")))?;
                this.0.write(|part| {
                    part.set_header(header);
                    Ok(())
                })
            });
        }
    }
}

/// A copy of one header (`headers:get_first_named`, `headers:iter`).
#[derive(Clone)]
pub struct LuaHeader(pub Header);

impl UserData for LuaHeader {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.0.name().to_string()));
        fields.add_field_method_get("raw_value", |lua, this| {
            lua.create_string(this.0.raw_value())
        });
        fields.add_field_method_get("value", |lua, this| {
            header_value(lua, &this.0, kind_for_name(this.0.name()))
        });
        let typed: [(&str, Kind); 7] = [
            ("unstructured", Kind::Unstructured),
            ("mailbox_list", Kind::MailboxList),
            ("address_list", Kind::AddressList),
            ("mailbox", Kind::Mailbox),
            ("message_id", Kind::MessageId),
            ("message_id_list", Kind::MessageIdList),
            ("mime_params", Kind::MimeParams),
        ];
        for (field, kind) in typed {
            fields.add_field_method_get(field, move |lua, this| header_value(lua, &this.0, kind));
        }
        fields.add_field_method_get("authentication_results", |_, _| -> LuaResult<LuaValue> {
            Err(runtime_error(
                "header.authentication_results is not supported by Tern yet",
            ))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |lua, this, ()| {
            lua.create_string(this.0.raw())
        });
    }
}

/// `kumo.mimepart.builder()`; consumed by `build()`.
#[derive(Clone, Default)]
pub struct LuaBuilder(Arc<Mutex<Option<MessageBuilder>>>);

impl LuaBuilder {
    fn with<R>(&self, f: impl FnOnce(&mut MessageBuilder) -> Result<R, String>) -> LuaResult<R> {
        let mut guard = self.0.lock();
        let builder = guard
            .as_mut()
            .ok_or_else(|| runtime_error("builder:build() was already called"))?;
        f(builder).map_err(runtime_error)
    }
}

fn attachment_options(lua: &Lua, value: Option<LuaValue>) -> LuaResult<Option<AttachmentOptions>> {
    match value {
        None | Some(LuaValue::Nil) => Ok(None),
        Some(value) => lua
            .from_value(value)
            .map(Some)
            .map_err(|err| runtime_error(format!("invalid attachment options: {err}"))),
    }
}

impl UserData for LuaBuilder {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("text_plain", |_, this, text: String| {
            this.with(|b| {
                b.text_plain(&text);
                Ok(())
            })
        });
        methods.add_method("text_html", |_, this, html: String| {
            this.with(|b| {
                b.text_html(&html);
                Ok(())
            })
        });
        methods.add_method(
            "attach",
            |lua, this, (content_type, data, options): (String, mlua::LuaString, Option<LuaValue>)| {
                let options = attachment_options(lua, options)?;
                let data = data.as_bytes().to_vec();
                this.with(|b| b.attach(&content_type, &data, options.as_ref()))
            },
        );
        methods.add_method("attach_part", |_, this, part: UserDataRef<LuaMimePart>| {
            let part = part.snapshot()?;
            this.with(|b| {
                b.attach_part(part);
                Ok(())
            })
        });
        methods.add_method("set_stable_content", |_, this, stable: bool| {
            this.with(|b| {
                b.set_stable_content(stable);
                Ok(())
            })
        });
        methods.add_method("build", |_, this, ()| {
            let builder = this
                .0
                .lock()
                .take()
                .ok_or_else(|| runtime_error("builder:build() was already called"))?;
            builder.build().map(LuaMimePart::new).map_err(runtime_error)
        });
    }
}

fn prefixed(name: &'static str) -> impl Fn(String) -> LuaError {
    move |err| runtime_error(format!("kumo.mimepart.{name}: {err}"))
}

/// Add `kumo.mimepart` to the `kumo` table. Unknown names in it raise
/// `kumo.mimepart.<name> is not supported by Tern yet`.
pub fn register(lua: &Lua, kumo: &Table) -> LuaResult<()> {
    let module = match kumo.raw_get::<LuaValue>("mimepart")? {
        LuaValue::Table(existing) => existing,
        _ => {
            let table = lua.create_table()?;
            let meta = lua.create_table()?;
            meta.raw_set(
                "__index",
                lua.create_function(|_, (_table, key): (LuaValue, LuaValue)| -> LuaResult<()> {
                    let name = match key {
                        LuaValue::String(s) => s.to_string_lossy(),
                        other => format!("{other:?}"),
                    };
                    Err(runtime_error(format!(
                        "kumo.mimepart.{name} is not supported by Tern yet"
                    )))
                })?,
            )?;
            table.set_metatable(Some(meta))?;
            kumo.raw_set("mimepart", table.clone())?;
            table
        }
    };
    module.raw_set(
        "parse",
        lua.create_function(|_, text: mlua::LuaString| {
            Ok(LuaMimePart::new(MimePart::parse(Bytes::copy_from_slice(
                &text.as_bytes(),
            ))))
        })?,
    )?;
    module.raw_set(
        "builder",
        lua.create_function(|_, ()| {
            Ok(LuaBuilder(Arc::new(Mutex::new(
                Some(MessageBuilder::new()),
            ))))
        })?,
    )?;
    module.raw_set(
        "new_text",
        lua.create_function(|_, (content_type, text): (String, String)| {
            MimePart::new_text(&content_type, &text)
                .map(LuaMimePart::new)
                .map_err(prefixed("new_text"))
        })?,
    )?;
    module.raw_set(
        "new_text_plain",
        lua.create_function(|_, text: String| {
            MimePart::new_text_plain(&text)
                .map(LuaMimePart::new)
                .map_err(prefixed("new_text_plain"))
        })?,
    )?;
    module.raw_set(
        "new_html",
        lua.create_function(|_, html: String| {
            MimePart::new_html(&html)
                .map(LuaMimePart::new)
                .map_err(prefixed("new_html"))
        })?,
    )?;
    module.raw_set(
        "new_binary",
        lua.create_function(
            |lua, (content_type, content, options): (String, mlua::LuaString, Option<LuaValue>)| {
                let options = attachment_options(lua, options)?;
                MimePart::new_binary(&content_type, &content.as_bytes(), options.as_ref())
                    .map(LuaMimePart::new)
                    .map_err(prefixed("new_binary"))
            },
        )?,
    )?;
    module.raw_set(
        "new_multipart",
        lua.create_function(
            |_, (content_type, parts, boundary): (String, Table, Option<String>)| {
                let mut children = Vec::new();
                for part in parts.sequence_values::<UserDataRef<LuaMimePart>>() {
                    let part = part.map_err(|_| {
                        runtime_error(
                            "kumo.mimepart.new_multipart: PARTS must be a list of MimePart objects",
                        )
                    })?;
                    children.push(part.snapshot()?);
                }
                MimePart::new_multipart(&content_type, children, boundary.as_deref())
                    .map(LuaMimePart::new)
                    .map_err(prefixed("new_multipart"))
            },
        )?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        let kumo = lua.create_table().unwrap();
        register(&lua, &kumo).unwrap();
        lua.globals().set("kumo", kumo).unwrap();
        lua
    }

    fn run(lua: &Lua, code: &str) {
        if let Err(err) = lua.load(code).exec() {
            panic!("lua failed: {err}\n{code}");
        }
    }

    const ALTERNATIVE_WITH_ATTACHMENT: &str = "From: \"Doe, J\" <j@example.com>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello =E2=82=AC\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello</p>\r\n--inner--\r\n--outer\r\nContent-Type: application/pdf; name=\"doc.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--outer\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\nContent-ID: <logo@example.com>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n--outer--\r\n";

    #[test]
    fn parse_and_inspect_from_lua() {
        let lua = lua();
        lua.globals()
            .set(
                "DATA",
                lua.create_string(ALTERNATIVE_WITH_ATTACHMENT).unwrap(),
            )
            .unwrap();
        run(
            &lua,
            r#"
            local root = kumo.mimepart.parse(DATA)
            assert(tostring(root) == DATA, 'round trip')
            local s = root:get_simple_structure()
            assert(s.text_part.body == 'Hello \u{20AC}', s.text_part.body)
            assert(s.html_part.body == '<p>Hello</p>')
            assert(s.amp_html_part == nil)
            assert(s.header_part.headers:subject() == 'café')
            assert(#s.attachments == 2)
            local pdf, logo = s.attachments[1], s.attachments[2]
            assert(pdf.file_name == 'report.pdf' and pdf.content_type == 'application/pdf')
            assert(pdf.inline == false and pdf.content_id == nil)
            assert(pdf.part.body == '%PDF-')
            assert(logo.file_name == nil and logo.inline == true)
            assert(logo.content_id == 'logo@example.com')
            assert(logo.part.body == '\x89PNG\r\n')
            assert(logo.part.raw_body == 'iVBORw0K')
            local from = root.headers:from()
            assert(#from == 1 and from[1].name == 'Doe, J')
            assert(from[1].address.local_part == 'j' and from[1].address.domain == 'example.com')
            assert(root:headers():content_type().parameters.boundary == 'outer')
            local kids = root:child_parts()
            assert(#kids == 3 and kids[2].id == '0.1' and root.id == '0')
            assert(#kids[1]:child_parts() == 2)
            local names = {}
            for hdr in root.headers:iter() do table.insert(names, hdr.name) end
            assert(table.concat(names, ',') == 'From,Subject,MIME-Version,Content-Type')
            local n = 0
            for hdr in root.headers:iter('subject') do
              n = n + 1
              assert(hdr.value == 'café' and hdr.raw_value == '=?utf-8?q?caf=C3=A9?=')
            end
            assert(n == 1)
            "#,
        );
    }

    #[test]
    fn edits_through_structure_alias_the_root() {
        let lua = lua();
        run(
            &lua,
            r#"
            local root = kumo.mimepart.parse('From: me@example.com\r\nSubject: hello\r\n\r\nHi')
            local s = root:get_simple_structure()
            assert(s.text_part.body == 'Hi')
            s.text_part.body = 'hello world!\r\n'
            assert(tostring(root) == 'From: me@example.com\r\nSubject: hello\r\nContent-Type: text/plain;\r\n\tcharset="us-ascii"\r\n\r\nhello world!\r\n', tostring(root))
            root:replace_body('\xff\xfe', 'application/octet-stream')
            assert(root.body == '\xff\xfe')
            assert(root.headers:content_transfer_encoding().value == 'base64')
            local ok, err = pcall(function() root:append_part(kumo.mimepart.new_text_plain('x')) end)
            assert(not ok and tostring(err):find('not a multipart'))
            "#,
        );
    }

    #[test]
    fn headermap_accessors() {
        let lua = lua();
        run(
            &lua,
            r#"
            local root = kumo.mimepart.new_text_plain 'Hello!'
            local headers = root.headers
            headers:prepend('X-Woot', 'Woot')
            headers:prepend('To', '"John Smith" <john.smith@example.com>')
            assert(tostring(headers) == 'To: "John Smith" <john.smith@example.com>\r\nX-Woot: Woot\r\nContent-Type: text/plain;\r\n\tcharset="us-ascii"\r\n', tostring(headers))
            local to = headers:get_first_named('to').value
            assert(to[1].name == 'John Smith' and to[1].address.local_part == 'john.smith')
            headers:set_from 'user@host'
            local from = headers:from()
            assert(from[1].name == nil and from[1].address.domain == 'host')
            headers:set_reply_to { { name = 'Test [hello]', address = { local_part = 'some.one', domain = 'example.com' } } }
            assert(headers:get_first_named('Reply-To').raw_value == '"Test [hello]" <some.one@example.com>')
            headers:set_bcc { { name = 'The A Team', entries = {
              { name = 'Bodie', address = { local_part = 'bodie', domain = 'example.com' } },
              { address = { local_part = 'doyle', domain = 'example.com' } } } } }
            assert(headers:get_first_named('bcc').raw_value == 'The A Team:Bodie <bodie@example.com>,\r\n\t<doyle@example.com>;', headers:get_first_named('bcc').raw_value)
            local bcc = headers:bcc()
            assert(bcc[1].name == 'The A Team' and #bcc[1].entries == 2)
            headers:set_subject 'very interesting subject'
            assert(headers:subject() == 'very interesting subject')
            headers:set_message_id '<123@example.com>'
            assert(headers:message_id() == '123@example.com')
            local ok, err = pcall(headers.set_message_id, headers, 'missing.angles@example.com')
            assert(not ok and tostring(err):find('invalid header'), tostring(err))
            headers:set_references { 'a@example.com', 'b@example.com' }
            local refs = headers:references()
            assert(#refs == 2 and refs[2] == 'b@example.com')
            local ct = headers:content_type()
            assert(ct.value == 'text/plain' and ct.parameters.charset == 'us-ascii')
            headers:set_content_type { value = 'text/html', parameters = { charset = 'utf-8', extra = 'a dash' } }
            assert(tostring(headers:get_first_named 'Content-type') == 'Content-Type: text/html;\r\n\tcharset="utf-8";\r\n\textra="a dash"\r\n')
            ok, err = pcall(headers.set_sender, headers, 'a@b.com, c@d.com')
            assert(not ok and tostring(err):find('exactly one mailbox'), tostring(err))
            headers:set_sender 'Someone <someone@example.com>'
            assert(headers:sender().name == 'Someone')
            headers:remove_all_named('x-woot')
            assert(headers:get_first_named('X-Woot') == nil)
            headers:append('X-Long', string.rep('hello there ', 10))
            assert(headers:get_first_named('X-Long').unstructured == string.rep('hello there ', 10):sub(1, -2))
            ok, err = pcall(function() return headers:get_first_named('Subject').mime_params end)
            assert(not ok and tostring(err):find('no valid MIME value'), tostring(err))
            ok, err = pcall(function() return headers:get_first_named('To').authentication_results end)
            assert(not ok and tostring(err):find('not supported by Tern yet'))
            ok, err = pcall(function() return kumo.mimepart.nope end)
            assert(not ok and tostring(err):find('kumo.mimepart.nope is not supported by Tern yet'))
            "#,
        );
    }

    #[test]
    fn builder_and_constructors() {
        let lua = lua();
        run(
            &lua,
            r#"
            local builder = kumo.mimepart.builder()
            builder:set_stable_content(true)
            builder:text_plain 'Hello, plain'
            builder:text_html '<b>Hello, html</b>'
            builder:attach('text/plain', 'I am a plain text file')
            builder:attach('application/octet-stream', '\xaa\xbb', { file_name = 'binary.dat' })
            builder:attach_part(kumo.mimepart.new_binary('image/gif', 'GIF8', { inline = true, content_id = 'pic@x' }))
            local root = builder:build()
            local ok, err = pcall(function() builder:build() end)
            assert(not ok and tostring(err):find('already called'))
            local s = root:get_simple_structure()
            assert(s.text_part.body == 'Hello, plain' and s.html_part.body == '<b>Hello, html</b>')
            assert(#s.attachments == 3)
            assert(s.attachments[1].content_type == 'text/plain' and s.attachments[1].part.body == 'I am a plain text file')
            assert(s.attachments[2].file_name == 'binary.dat' and s.attachments[2].part.body == '\xaa\xbb')
            assert(s.attachments[3].inline and s.attachments[3].content_id == 'pic@x')
            local text = tostring(root)
            assert(text:find('boundary="mm-boundary"', 1, true) and text:find('Date: Tue, 1 Jul 2003', 1, true))
            ok, err = pcall(kumo.mimepart.new_binary, 'a/b', 'x', { bogus = 1 })
            assert(not ok and tostring(err):find('bogus'), tostring(err))
            local multi = kumo.mimepart.new_multipart('multipart/mixed', { kumo.mimepart.new_text('text/markdown', '# hi') }, 'woot')
            multi:append_part(kumo.mimepart.new_html('<i>x</i>'))
            assert(#multi:child_parts() == 2)
            local again = kumo.mimepart.parse(tostring(multi))
            assert(again:child_parts()[1].headers:content_type().value == 'text/markdown')
            assert(again:get_simple_structure().html_part.body == '<i>x</i>')
            local rebuilt = kumo.mimepart.parse('Subject: x\n\ncaf\xc3\xa9\n'):rebuild()
            assert(rebuilt.headers:mime_version() == '1.0')
            assert(rebuilt.body == 'caf\xc3\xa9\r\n')
            ok, err = pcall(kumo.mimepart.new_multipart, 'multipart/mixed', { 'not a part' })
            assert(not ok and tostring(err):find('list of MimePart'))
            "#,
        );
    }

    /// The built message parsed back by Python's `email` package.
    #[test]
    fn built_message_is_valid_mime_for_python() {
        let lua = lua();
        let built: mlua::LuaString = lua
            .load(
                r#"
                local builder = kumo.mimepart.builder()
                builder:text_plain 'Hello, plain caf\xc3\xa9\nsecond line'
                builder:text_html '<b>Hello, html</b>'
                builder:attach('application/octet-stream', '\x00\xaa\xbb\xff', { file_name = 'r\xc3\xa9sum\xc3\xa9.bin' })
                builder:attach('image/png', 'PNGDATA', { inline = true, content_id = 'logo@x' })
                local root = builder:build()
                root.headers:set_subject 'Subject \xe2\x82\xac'
                root.headers:set_from { { name = 'J\xc3\xb6rg', address = { local_part = 'j', domain = 'example.com' } } }
                root.headers:set_to 'a@example.com, "B, b" <b@example.com>'
                return tostring(root)
                "#,
            )
            .eval()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("tern-mimepart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("built.eml");
        std::fs::write(&path, built.as_bytes()).unwrap();
        let script = r#"
import email, email.policy, sys
with open(sys.argv[1], 'rb') as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)
assert not msg.defects, msg.defects
assert msg.get_content_type() == 'multipart/mixed'
assert str(msg['Subject']) == 'Subject \u20ac', msg['Subject']
assert msg['From'].addresses[0].display_name == 'J\u00f6rg'
assert [a.addr_spec for a in msg['To'].addresses] == ['a@example.com', 'b@example.com']
parts = list(msg.walk())
for p in parts:
    assert not p.defects, (p.get_content_type(), p.defects)
plain = msg.get_body(('plain',)).get_content()
assert plain == 'Hello, plain caf\u00e9\nsecond line\n' or plain == 'Hello, plain caf\u00e9\nsecond line', repr(plain)
assert msg.get_body(('html',)).get_content().strip() == '<b>Hello, html</b>'
atts = list(msg.iter_attachments())
assert atts[0].get_filename() == 'r\u00e9sum\u00e9.bin', atts[0].get_filename()
assert atts[0].get_content() == b'\x00\xaa\xbb\xff'
assert atts[1]['Content-ID'] == '<logo@x>'
assert atts[1].get_content_disposition() == 'inline'
print('ok')
"#;
        let output = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .output()
            .expect("python3 runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            output.status.success() && output.stdout.starts_with(b"ok"),
            "python rejected the message:\n{}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&built.as_bytes())
        );
    }

    #[test]
    fn malformed_messages_from_lua_do_not_panic() {
        let lua = lua();
        run(
            &lua,
            r#"
            local inputs = {
              'Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@@',
              'Content-Type: multipart/alternative\r\n\r\nmissing boundary',
              '\xff\xfe: \xff\r\n\r\n\xff',
              'From: <<<>>>\r\nMessage-ID: nope\r\nContent-Type: ;\r\n\r\n',
              '',
            }
            for _, input in ipairs(inputs) do
              local root = kumo.mimepart.parse(input)
              assert(tostring(root) == input)
              local s = root:get_simple_structure()
              for _, att in ipairs(s.attachments) do pcall(function() return att.part.body end) end
              for hdr in root.headers:iter() do
                pcall(function() return hdr.value end)
                pcall(function() return hdr.mime_params end)
                pcall(function() return hdr.address_list end)
              end
              pcall(function() return root:rebuild() end)
              pcall(function() root.body = 'x' end)
            end
            "#,
        );
    }
}
