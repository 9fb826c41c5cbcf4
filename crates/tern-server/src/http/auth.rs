//! Authentication and authorization of HTTP requests (spec §4.2).
//!
//! Every request gets an [`AuthInfo`]: the peer address, the group
//! `kumomta:http-listener-trusted-ip` when the peer is in `trusted_hosts`,
//! and the identity proven by an `Authorization` header, checked by the
//! policy's `http_server_validate_auth_basic` / `..._bearer` handler and
//! cached per credential for 60 seconds. Authorization then applies
//! KumoMTA's built-in default ACL to the method and path. Replacing the ACL
//! (`get_acl_definition`, `kumo.aaa.*`) is not supported by Tern yet.

use base64::Engine;
use mlua::{IntoLuaMulti, Value};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tern_policy::{PolicyEngine, json_to_lua, lua_to_json};

/// The group given to peers that match `trusted_hosts`.
pub const TRUSTED_GROUP: &str = "kumomta:http-listener-trusted-ip";
/// How long a credential check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered credentials; the cache is emptied past it.
const CACHE_MAX: usize = 10_000;

/// One proven identity.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub identity: String,
    pub context: String,
}

/// Who is making a request, as passed to policy events as `auth_info`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuthInfo {
    #[serde(default)]
    pub peer_address: Option<String>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The Basic user name, if one was proven (for `http_auth` meta).
    #[serde(skip)]
    pub basic_user: Option<String>,
}

impl AuthInfo {
    pub fn is_trusted(&self) -> bool {
        self.groups.iter().any(|g| g == TRUSTED_GROUP)
    }

    /// The value of the `http_auth` meta key: the Basic user, else the
    /// first identity, else the peer address.
    pub fn summary_for_meta(&self) -> String {
        self.basic_user
            .clone()
            .or_else(|| self.identities.first().map(|i| i.identity.clone()))
            .or_else(|| self.peer_address.clone())
            .unwrap_or_default()
    }

    /// A short description for denial messages.
    fn describe(&self) -> String {
        match self.identities.first() {
            Some(id) => format!("{} ({})", id.identity, id.context),
            None => format!(
                "peer {}",
                self.peer_address.as_deref().unwrap_or("(unknown)")
            ),
        }
    }

    /// Merge the identities and groups of an AuthInfo table returned by a
    /// validation handler.
    fn merge_json(&mut self, value: &serde_json::Value) {
        if let Some(ids) = value.get("identities").and_then(|v| v.as_array()) {
            for id in ids {
                if let Ok(id) = serde_json::from_value::<Identity>(id.clone())
                    && !self.identities.contains(&id)
                {
                    self.identities.push(id);
                }
            }
        }
        if let Some(groups) = value.get("groups").and_then(|v| v.as_array()) {
            for g in groups.iter().filter_map(|g| g.as_str()) {
                if !self.groups.iter().any(|x| x == g) {
                    self.groups.push(g.to_string());
                }
            }
        }
    }
}

/// Why a request was refused before reaching its handler:
/// `(status, body text)`.
pub type Refusal = (u16, String);

/// The remembered outcome of one credential check.
#[derive(Clone)]
enum Verdict {
    Denied,
    /// Proven; `extra` is an AuthInfo table to merge, if the handler
    /// returned one.
    Granted(Option<serde_json::Value>),
}

/// Per-listener cache of credential checks.
#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, (Instant, Verdict)>>,
}

impl AuthCache {
    fn get(&self, key: &str) -> Option<Verdict> {
        let entries = self.entries.lock();
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: String, verdict: Verdict) {
        let mut entries = self.entries.lock();
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), verdict));
    }
}

enum Credential {
    Basic {
        user: String,
        password: Option<String>,
    },
    Bearer(String),
}

fn parse_authorization(header: &[u8]) -> Result<Credential, Refusal> {
    let malformed = || {
        (
            400,
            "Malformed or unsupported Authorization header".to_string(),
        )
    };
    let text = std::str::from_utf8(header).map_err(|_| malformed())?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("Basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        Ok(match decoded.split_once(':') {
            Some((user, password)) => Credential::Basic {
                user: user.to_string(),
                password: Some(password.to_string()),
            },
            None => Credential::Basic {
                user: decoded,
                password: None,
            },
        })
    } else if scheme.eq_ignore_ascii_case("Bearer") && !rest.is_empty() {
        Ok(Credential::Bearer(rest.to_string()))
    } else {
        Err(malformed())
    }
}

/// Establish who is asking: trusted-host group, then the credential of
/// the `Authorization` header (if any) through the policy.
pub async fn authenticate(
    engine: &PolicyEngine,
    cache: &AuthCache,
    trusted: bool,
    peer: IpAddr,
    authorization: Option<&[u8]>,
) -> Result<AuthInfo, Refusal> {
    let mut info = AuthInfo {
        peer_address: Some(peer.to_string()),
        ..Default::default()
    };
    if trusted {
        info.groups.push(TRUSTED_GROUP.to_string());
    }
    let Some(header) = authorization else {
        return Ok(info);
    };
    let credential = parse_authorization(header)?;
    let (key, event, context, who) = match &credential {
        Credential::Basic { user, password } => (
            format!("basic\0{user}\0{}", password.as_deref().unwrap_or("\u{1}")),
            "http_server_validate_auth_basic",
            "HttpBasicAuth",
            user.clone(),
        ),
        Credential::Bearer(token) => (
            format!("bearer\0{token}"),
            "http_server_validate_auth_bearer",
            "HttpBearerAuth",
            "bearer token".to_string(),
        ),
    };
    let verdict = match cache.get(&key) {
        Some(v) => v,
        None => {
            let verdict = validate(engine, event, &credential).await?;
            cache.put(key, verdict.clone());
            verdict
        }
    };
    match verdict {
        Verdict::Denied => Err((401, format!("{context} Authentication Failed for {who}"))),
        Verdict::Granted(extra) => {
            let identity = match &credential {
                Credential::Basic { user, .. } => {
                    info.basic_user = Some(user.clone());
                    user.clone()
                }
                Credential::Bearer(token) => token.clone(),
            };
            info.identities.push(Identity {
                identity,
                context: context.to_string(),
            });
            if let Some(extra) = extra {
                info.merge_json(&extra);
            }
            Ok(info)
        }
    }
}

async fn validate(
    engine: &PolicyEngine,
    event: &str,
    credential: &Credential,
) -> Result<Verdict, Refusal> {
    let credential_args: Vec<Option<String>> = match credential {
        Credential::Basic { user, password } => vec![Some(user.clone()), password.clone()],
        Credential::Bearer(token) => vec![Some(token.clone())],
    };
    let result = engine
        .dispatch(
            event,
            move |lua| {
                let mut values = Vec::with_capacity(credential_args.len());
                for arg in credential_args {
                    values.push(match arg {
                        Some(text) => Value::String(lua.create_string(&text)?),
                        None => Value::Nil,
                    });
                }
                mlua::MultiValue::from_vec(values).into_lua_multi(lua)
            },
            |lua, values| {
                Ok(match values.into_iter().next() {
                    Some(Value::Boolean(true)) => Verdict::Granted(None),
                    Some(value @ Value::Table(_)) => {
                        Verdict::Granted(Some(lua_to_json(lua, value)?))
                    }
                    _ => Verdict::Denied,
                })
            },
        )
        .await;
    match result {
        Ok(Some(verdict)) => Ok(verdict),
        // No handler: nobody can authenticate with credentials.
        Ok(None) => Ok(Verdict::Denied),
        Err(err) => {
            tracing::error!("{event}: {err}");
            Err((500, "try again later".to_string()))
        }
    }
}

/// The AuthInfo as a Lua table for event handlers.
pub fn to_lua(lua: &mlua::Lua, info: &AuthInfo) -> mlua::Result<Value> {
    let json = serde_json::to_value(info).map_err(mlua::Error::external)?;
    json_to_lua(lua, &json)
}

/// Who may do what under KumoMTA's built-in default ACL.
enum Allowed {
    Anyone,
    Trusted,
    TrustedOrAuthenticated,
}

/// Resource prefixes of the default ACL with their privileges, most
/// specific first.
const DEFAULT_ACL: &[(&str, &[&str], Allowed)] = &[
    ("api/check-liveness", &["GET"], Allowed::Anyone),
    ("rapidoc", &["GET"], Allowed::Anyone),
    ("api-docs/openapi.json", &["GET"], Allowed::Anyone),
    ("api/inject", &["POST"], Allowed::TrustedOrAuthenticated),
    ("api/admin", &["GET", "DELETE", "POST"], Allowed::Trusted),
    ("api/machine-info", &["GET"], Allowed::Trusted),
    ("metrics.json", &["GET"], Allowed::Trusted),
    ("metrics", &["GET"], Allowed::Trusted),
    ("api/xfer", &["POST"], Allowed::Trusted),
];

/// Apply the default ACL: the resource is `http_listener/<listen>/<path>`
/// and the privilege is the method. No matching rule → denied.
pub fn authorize(info: &AuthInfo, listen: &str, method: &str, path: &str) -> Result<(), Refusal> {
    let trimmed = path.trim_start_matches('/');
    let rule = DEFAULT_ACL.iter().find(|(prefix, _, _)| {
        trimmed == *prefix
            || trimmed
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    });
    let resource = format!("http_listener/{listen}/{trimmed}");
    let Some((_, privileges, who)) = rule else {
        return Err((
            401,
            format!("{} denied {method} on {resource}", info.describe()),
        ));
    };
    let allowed = privileges.contains(&method)
        && match who {
            Allowed::Anyone => true,
            Allowed::Trusted => info.is_trusted(),
            Allowed::TrustedOrAuthenticated => info.is_trusted() || !info.identities.is_empty(),
        };
    if allowed {
        Ok(())
    } else {
        Err((
            401,
            format!("{} not permitted {method} on {resource}", info.describe()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(trusted: bool, identity: bool) -> AuthInfo {
        AuthInfo {
            peer_address: Some("10.0.0.1".into()),
            identities: if identity {
                vec![Identity {
                    identity: "u".into(),
                    context: "HttpBasicAuth".into(),
                }]
            } else {
                vec![]
            },
            groups: if trusted {
                vec![TRUSTED_GROUP.into()]
            } else {
                vec![]
            },
            basic_user: None,
        }
    }

    #[test]
    fn default_acl() {
        let listen = "127.0.0.1:8000";
        assert!(authorize(&info(false, false), listen, "GET", "/api/check-liveness/v1").is_ok());
        assert!(authorize(&info(false, false), listen, "POST", "/api/inject/v1").is_err());
        assert!(authorize(&info(true, false), listen, "POST", "/api/inject/v1").is_ok());
        assert!(authorize(&info(false, true), listen, "POST", "/api/inject/v1").is_ok());
        assert!(authorize(&info(false, true), listen, "GET", "/api/inject/v1").is_err());
        assert!(authorize(&info(false, true), listen, "GET", "/api/admin/x").is_err());
        assert!(authorize(&info(true, false), listen, "GET", "/api/admin/x").is_ok());
        assert!(authorize(&info(true, false), listen, "GET", "/api/injection").is_err());
        let (status, text) =
            authorize(&info(false, false), listen, "POST", "/api/inject/v1").unwrap_err();
        assert_eq!(status, 401);
        assert_eq!(
            text,
            "peer 10.0.0.1 not permitted POST on http_listener/127.0.0.1:8000/api/inject/v1"
        );
    }

    #[test]
    fn authorization_headers() {
        let basic = base64::engine::general_purpose::STANDARD.encode("user:pa:ss");
        match parse_authorization(format!("Basic {basic}").as_bytes()) {
            Ok(Credential::Basic { user, password }) => {
                assert_eq!(user, "user");
                assert_eq!(password.as_deref(), Some("pa:ss"));
            }
            _ => panic!("basic"),
        }
        assert!(matches!(
            parse_authorization(b"Bearer tok"),
            Ok(Credential::Bearer(t)) if t == "tok"
        ));
        assert_eq!(parse_authorization(b"Digest x").err().unwrap().0, 400);
        assert_eq!(parse_authorization(b"Basic !!!").err().unwrap().0, 400);
    }

    #[test]
    fn meta_summary_prefers_the_basic_user() {
        let mut i = info(true, true);
        assert_eq!(i.summary_for_meta(), "u");
        i.basic_user = Some("basic".into());
        assert_eq!(i.summary_for_meta(), "basic");
        assert_eq!(info(false, false).summary_for_meta(), "10.0.0.1");
    }
}
