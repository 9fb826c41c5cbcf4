//! Authentication results (RFC 8601) as KumoMTA policies see them, and the
//! `Authentication-Results` header that `msg:add_authentication_results`
//! prepends.
//!
//! [`AuthenticationResult`] is one `resinfo` of RFC 8601: a method (`dkim`,
//! `arc`, `spf`, ...), its result, an optional reason and method-specific
//! properties such as `header.d`. `msg:dkim_verify` and `msg:arc_verify`
//! produce these; policies may also build them by hand (an SPF check of
//! their own, say) and pass them back. The serde shape is KumoMTA's, field
//! for field, with unknown fields refused, so a table that works upstream
//! works here.
//!
//! [`render_authentication_results`] writes the header value the way
//! KumoMTA does: `serv-id`, then each result on its own folded line
//! (`method=result reason="..."`) with one property per further line,
//! properties sorted by name, values quoted only when they are not MIME
//! tokens. A value may come from a policy, so anything that could break out
//! of the header (CR, LF, NUL) is refused rather than written.

use crate::headers::{self, HeaderBlock};
use crate::message::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One authentication result (RFC 8601 `resinfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationResult {
    /// `dkim`, `arc`, `spf`, ...
    pub method: String,
    #[serde(default)]
    pub method_version: Option<u32>,
    /// `pass`, `fail`, `neutral`, `none`, `temperror`, `permerror`, `policy`, ...
    pub result: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Method-specific properties, e.g. `header.d` -> `example.com`.
    #[serde(default)]
    pub props: BTreeMap<String, String>,
}

impl AuthenticationResult {
    /// A result without reason or properties.
    pub fn new(method: &str, result: &str) -> Self {
        Self {
            method: method.to_string(),
            result: result.to_string(),
            ..Self::default()
        }
    }

    /// The same result with `reason` set.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// RFC 2045 token characters (printable ASCII without specials or space).
fn is_mime_token(byte: u8) -> bool {
    byte.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&byte)
}

/// Write `value` as a token when it is one (an `@` is allowed too, for
/// `header.i=@example.com`), otherwise as a quoted string.
fn push_value(out: &mut String, value: &str) {
    if !value.is_empty() && value.bytes().all(|b| is_mime_token(b) || b == b'@') {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Refuse text that would end the header early or corrupt it.
fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(format!(
            "{what} {value:?} contains a line break or NUL, which cannot go into a header"
        ));
    }
    Ok(())
}

/// A name written without quoting (method, property name, serv-id) must
/// be a plain token.
fn check_name(what: &str, value: &str) -> Result<(), String> {
    check_text(what, value)?;
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b";=\"\\".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be non-empty printable ASCII without spaces, ';', '=' or quotes"
        ))
    }
}

/// The `Authentication-Results` value for `serv_id` and `results`, with
/// folds written as `eol` + tab. No results gives `serv-id; none`.
pub fn render_authentication_results(
    serv_id: &str,
    version: Option<u32>,
    results: &[AuthenticationResult],
    eol: &str,
) -> Result<String, String> {
    check_name("the authserv-id", serv_id)?;
    let mut out = String::with_capacity(64 + results.len() * 128);
    out.push_str(serv_id);
    if let Some(version) = version {
        out.push_str(&format!(" {version}"));
    }
    if results.is_empty() {
        out.push_str("; none");
        return Ok(out);
    }
    for result in results {
        check_name("the method", &result.method)?;
        check_text("the result", &result.result)?;
        out.push(';');
        out.push_str(eol);
        out.push('\t');
        push_value(&mut out, &result.method);
        if let Some(version) = result.method_version {
            out.push_str(&format!("/{version}"));
        }
        out.push('=');
        push_value(&mut out, &result.result);
        if let Some(reason) = &result.reason {
            check_text("the reason", reason)?;
            out.push_str(" reason=");
            push_value(&mut out, reason);
        }
        for (name, value) in &result.props {
            check_name("the property name", name)?;
            check_text("the property value", value)?;
            out.push_str(eol);
            out.push('\t');
            out.push_str(name);
            out.push('=');
            push_value(&mut out, value);
        }
    }
    Ok(out)
}

impl Message {
    /// Prepend `Authentication-Results: <serv_id>; <results>` (what
    /// `msg:add_authentication_results` does). Folds use the message's own
    /// line ending.
    pub fn add_authentication_results(
        &self,
        serv_id: &str,
        results: &[AuthenticationResult],
    ) -> Result<(), String> {
        self.edit_data(|data| {
            let eol = HeaderBlock::parse(data).line_ending();
            let value = render_authentication_results(serv_id, None, results, eol)?;
            Ok::<_, String>(Some(headers::prepend_header(
                data,
                "Authentication-Results",
                &value,
                false,
            )))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim_pass() -> AuthenticationResult {
        let mut result = AuthenticationResult::new("dkim", "pass");
        for (k, v) in [
            ("header.d", "github.com"),
            ("header.i", "@github.com"),
            ("header.s", "pf2023"),
            ("header.a", "rsa-sha256"),
            ("header.b", "jo0EO4dX"),
        ] {
            result.props.insert(k.to_string(), v.to_string());
        }
        result
    }

    #[test]
    fn renders_like_kumomta() {
        let text = render_authentication_results(
            "mx.example.com",
            None,
            &[dkim_pass(), AuthenticationResult::new("spf", "pass")],
            "\r\n",
        )
        .unwrap();
        assert_eq!(
            text,
            "mx.example.com;\r\n\tdkim=pass\r\n\theader.a=rsa-sha256\r\n\theader.b=jo0EO4dX\
             \r\n\theader.d=github.com\r\n\theader.i=@github.com\r\n\theader.s=pf2023\
             ;\r\n\tspf=pass"
        );
    }

    #[test]
    fn quoting_versions_and_none() {
        assert_eq!(
            render_authentication_results("mx", Some(1), &[], "\r\n").unwrap(),
            "mx 1; none"
        );
        let mut result = AuthenticationResult::new("dkim", "fail")
            .with_reason("body hash did not verify \"really\"");
        result.method_version = Some(1);
        result
            .props
            .insert("header.b".into(), "ab/c+d==".to_string());
        assert_eq!(
            render_authentication_results("mx", None, &[result], "\n").unwrap(),
            "mx;\n\tdkim/1=fail reason=\"body hash did not verify \\\"really\\\"\"\n\theader.b=\"ab/c+d==\""
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let bad_reason = AuthenticationResult::new("dkim", "pass").with_reason("x\r\nBcc: y");
        assert!(
            render_authentication_results("mx", None, &[bad_reason], "\r\n")
                .unwrap_err()
                .contains("line break")
        );
        assert!(render_authentication_results("mx\r\nX: y", None, &[], "\r\n").is_err());
        assert!(render_authentication_results("", None, &[], "\r\n").is_err());
        let mut bad_prop = AuthenticationResult::new("dkim", "pass");
        bad_prop.props.insert("a b".into(), "x".into());
        assert!(render_authentication_results("mx", None, &[bad_prop], "\r\n").is_err());
    }

    #[test]
    fn serde_shape_is_kumomtas() {
        let json = serde_json::to_value(dkim_pass()).unwrap();
        assert_eq!(json["method"], "dkim");
        assert!(json["reason"].is_null() && json["method_version"].is_null());
        assert_eq!(json["props"]["header.d"], "github.com");
        let parsed: AuthenticationResult =
            serde_json::from_str(r#"{"method":"spf","result":"pass"}"#).unwrap();
        assert_eq!(parsed, AuthenticationResult::new("spf", "pass"));
        assert!(
            serde_json::from_str::<AuthenticationResult>(
                r#"{"method":"spf","result":"pass","extra":1}"#
            )
            .is_err()
        );
    }
}
