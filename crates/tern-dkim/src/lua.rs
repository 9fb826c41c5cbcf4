//! The `kumo.dkim` Lua bindings and the signing behind `msg:dkim_sign`.
//!
//! [`DkimRegistrar`] is handed to the policy engine as a
//! [`tern_policy::LuaRegistrar`]. On every new Lua state it installs
//!
//! * `kumo.dkim.rsa_sha256_signer { ... }` and `kumo.dkim.ed25519_signer { ... }`:
//!   the table is deserialized strictly into a [`SignerConfig`] and the
//!   signer is taken from the shared [`SignerCache`], so a policy that builds
//!   a signer per message parses each key once per `ttl`. The result is a
//!   [`LuaSigner`] userdata.
//! * `kumo.dkim.set_signing_threads(n)`: starts (or resizes) the shared
//!   [`SigningPool`].
//! * a [`DkimSignHook`] in the state's app data, which is what
//!   `msg:dkim_sign(signer)` (defined by `tern-message`, which cannot depend
//!   on this crate) calls;
//! * an [`AuthHook`] for `msg:dkim_verify([resolver])`: it picks the
//!   resolver from the server's [`DnsHandle`] (the default one, or a
//!   `kumo.dns.define_resolver` name) when the method is called, so test
//!   zones configured in `init` apply, and returns a future that looks the
//!   keys up without blocking a runtime thread. A registrar built without a
//!   DNS handle ([`DkimRegistrar::with_dns`] not called) makes the method
//!   raise an error that says so. The same hook serves `msg:arc_verify`
//!   and `msg:arc_seal(signer, serv_id, results[, resolver])`, which
//!   verifies the chain and prepends the new ARC set unless the chain
//!   failed.
//!
//! Signing reads the message bytes once, computes the header, and stores
//! `header + those bytes` as the new message data, so the signature is the
//! first header. Without a pool this happens inline, on the thread running
//! the policy; with a pool the Lua handler waits (as an async call) while a
//! `dkimsign-*` thread signs, and the pool's lock is released before waiting.

use crate::config::{Algorithm, SignerConfig};
use crate::{DkimError, Signer, SignerCache, SigningPool};
use mlua::{AnyUserData, Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};
use parking_lot::RwLock;
use std::sync::Arc;
use tern_dns::DnsHandle;
use tern_message::lua::{AuthFuture, AuthHook, DkimSignFuture, DkimSignHook, MessageAuthenticator};
use tern_message::{AuthenticationResult, Message};
use tern_policy::kumo_module::namespace;
use tern_policy::{LuaRegistrar, from_lua_params};

/// A signer as Lua sees it: what `kumo.dkim.*_signer` returns and
/// `msg:dkim_sign` accepts. `tostring(signer)` names its domain, selector
/// and algorithm; the fields `domain`, `selector` and `algorithm` are
/// readable.
#[derive(Clone)]
pub struct LuaSigner(pub Arc<Signer>);

impl UserData for LuaSigner {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("domain", |_, this| Ok(this.0.domain().to_string()));
        fields.add_field_method_get("selector", |_, this| Ok(this.0.selector().to_string()));
        fields.add_field_method_get("algorithm", |_, this| Ok(this.0.algorithm().tag_value()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!(
                "DkimSigner(d={}, s={}, a={})",
                this.0.domain(),
                this.0.selector(),
                this.0.algorithm().tag_value()
            ))
        });
    }
}

/// Installs `kumo.dkim.*` and the `msg:dkim_sign` hook. Cheap to clone; all
/// clones (and every Lua state they registered into) share one cache and
/// one pool.
#[derive(Clone, Default)]
pub struct DkimRegistrar {
    /// Signers shared by every Lua state of the server.
    pub cache: Arc<SignerCache>,
    /// The `dkimsign` pool, once `kumo.dkim.set_signing_threads` was called.
    pub pool: Arc<RwLock<Option<SigningPool>>>,
    /// The server's resolvers, for `msg:dkim_verify`.
    pub dns: Option<DnsHandle>,
}

impl DkimRegistrar {
    /// A registrar over an existing cache, with no signing pool.
    pub fn new(cache: Arc<SignerCache>) -> Self {
        Self {
            cache,
            pool: Arc::default(),
            dns: None,
        }
    }

    /// The same registrar, verifying with the resolvers of `dns`.
    pub fn with_dns(mut self, dns: DnsHandle) -> Self {
        self.dns = Some(dns);
        self
    }

    /// Number of signing threads, or `None` when signing is inline.
    pub fn signing_threads(&self) -> Option<usize> {
        self.pool.read().as_ref().map(SigningPool::threads)
    }

    /// Start a pool of `threads` signing threads, replacing any pool of a
    /// different size. Every Lua state runs the policy, so the same call
    /// arrives many times: asking for the current size keeps the pool.
    pub fn set_signing_threads(&self, threads: usize) -> Result<(), DkimError> {
        if threads == 0 {
            return Err(DkimError::Pool(
                "a signing pool needs at least 1 thread".into(),
            ));
        }
        if self.signing_threads() == Some(threads) {
            return Ok(());
        }
        let pool = SigningPool::new(threads)?;
        let previous = self.pool.write().replace(pool);
        // Joining the old threads happens outside the lock; jobs already
        // queued on them still finish.
        drop(previous);
        Ok(())
    }

    /// Sign `msg` with `signer` and prepend the header, on the pool if
    /// there is one. The returned future does not borrow `self`.
    pub fn sign_message(
        &self,
        signer: Arc<Signer>,
        msg: &Message,
    ) -> Result<DkimSignFuture, DkimError> {
        let data = msg.data();
        // The read guard is dropped at the end of this statement, before
        // anything waits.
        let queued = match self.pool.read().as_ref() {
            Some(pool) => Some(pool.submit(signer.clone(), data.clone())?),
            None => None,
        };
        match queued {
            None => {
                let header = signer.sign(&data)?;
                prepend(msg, &header, &data);
                Ok(Box::pin(std::future::ready(Ok(()))))
            }
            Some(wait) => {
                let msg = msg.clone();
                Ok(Box::pin(async move {
                    let header = wait.await.map_err(sign_error)?;
                    prepend(&msg, &header, &data);
                    Ok(())
                }))
            }
        }
    }

    fn hook(&self) -> DkimSignHook {
        let registrar = self.clone();
        DkimSignHook(Arc::new(move |signer: &AnyUserData, msg: &Message| {
            let signer = signer
                .borrow::<LuaSigner>()
                .map_err(|_| {
                    mlua::Error::runtime(
                        "msg:dkim_sign expects a signer made by kumo.dkim.rsa_sha256_signer or kumo.dkim.ed25519_signer",
                    )
                })?
                .0
                .clone();
            registrar.sign_message(signer, msg).map_err(sign_error)
        }))
    }
}

/// Seconds since the Unix epoch, for `x=` checks.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Verification through the server's resolvers.
struct Authenticator {
    dns: Option<DnsHandle>,
}

impl Authenticator {
    fn resolver(&self, name: Option<&str>) -> Result<Arc<tern_dns::Resolver>, String> {
        let dns = self.dns.as_ref().ok_or_else(|| {
            "no DNS resolver is available to this policy engine (DkimRegistrar::with_dns was not called)"
                .to_string()
        })?;
        Ok(dns.select(name)?.resolver().clone())
    }
}

impl MessageAuthenticator for Authenticator {
    fn dkim_verify(
        &self,
        msg: &Message,
        resolver: Option<&str>,
    ) -> Result<AuthFuture<Vec<AuthenticationResult>>, String> {
        let resolver = self.resolver(resolver)?;
        // The bytes as they are now; later edits do not affect this call.
        let data = msg.data();
        Ok(Box::pin(async move {
            Ok(crate::verify_dkim(&data, &resolver, unix_now()).await)
        }))
    }

    fn arc_verify(
        &self,
        msg: &Message,
        resolver: Option<&str>,
    ) -> Result<AuthFuture<AuthenticationResult>, String> {
        let resolver = self.resolver(resolver)?;
        let data = msg.data();
        Ok(Box::pin(async move {
            Ok(crate::verify_arc(&data, &resolver).await)
        }))
    }

    fn arc_seal(
        &self,
        signer: &AnyUserData,
        msg: &Message,
        serv_id: &str,
        results: Vec<AuthenticationResult>,
        resolver: Option<&str>,
    ) -> Result<AuthFuture<()>, String> {
        let signer = signer
            .borrow::<LuaSigner>()
            .map_err(|_| {
                "expects a signer made by kumo.dkim.rsa_sha256_signer or kumo.dkim.ed25519_signer"
                    .to_string()
            })?
            .0
            .clone();
        let resolver = self.resolver(resolver)?;
        // The message as it is now: the set is computed over these bytes
        // and prepended to exactly them.
        let data = msg.data();
        let msg = msg.clone();
        let serv_id = serv_id.to_string();
        Ok(Box::pin(async move {
            let set = crate::seal_arc(&data, &signer, &serv_id, &results, &resolver, unix_now())
                .await
                .map_err(|err| err.to_string())?;
            // A failed chain gets no new set (as KumoMTA): nothing to add.
            if let Some(set) = set {
                prepend(&msg, &set, &data);
            }
            Ok(())
        }))
    }
}

fn sign_error(err: DkimError) -> mlua::Error {
    mlua::Error::runtime(format!("msg:dkim_sign: {err}"))
}

/// Store `header` followed by `signed` (the exact bytes that were signed)
/// as the message data.
fn prepend(msg: &Message, header: &str, signed: &[u8]) {
    let mut data = Vec::with_capacity(header.len() + signed.len());
    data.extend_from_slice(header.as_bytes());
    data.extend_from_slice(signed);
    msg.set_data(data.into());
}

impl LuaRegistrar for DkimRegistrar {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        let dkim = namespace(lua, kumo, "dkim")?;
        for (name, algorithm) in [
            ("rsa_sha256_signer", Algorithm::RsaSha256),
            ("ed25519_signer", Algorithm::Ed25519Sha256),
        ] {
            let cache = self.cache.clone();
            let function = format!("kumo.dkim.{name}");
            dkim.raw_set(
                name,
                lua.create_function(move |lua, params: Value| {
                    let config: SignerConfig = from_lua_params(lua, params, &function)?;
                    let signer = cache
                        .get_or_build(algorithm, config)
                        .map_err(|err| mlua::Error::runtime(format!("{function}: {err}")))?;
                    Ok(LuaSigner(signer))
                })?,
            )?;
        }
        let registrar = self.clone();
        dkim.raw_set(
            "set_signing_threads",
            lua.create_function(move |_, threads: i64| {
                let fail = |why: String| {
                    mlua::Error::runtime(format!("kumo.dkim.set_signing_threads: {why}"))
                };
                let threads = usize::try_from(threads)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| fail(format!("needs at least 1 thread, got {threads}")))?;
                registrar
                    .set_signing_threads(threads)
                    .map_err(|err| fail(err.to_string()))
            })?,
        )?;
        lua.set_app_data(self.hook());
        lua.set_app_data(AuthHook(Arc::new(Authenticator {
            dns: self.dns.clone(),
        })));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_threads_start_resize_and_reject_zero() {
        let registrar = DkimRegistrar::default();
        assert_eq!(registrar.signing_threads(), None);
        registrar.set_signing_threads(1).unwrap();
        assert_eq!(registrar.signing_threads(), Some(1));
        registrar.set_signing_threads(3).unwrap();
        assert_eq!(registrar.signing_threads(), Some(3));
        let err = registrar.set_signing_threads(0).unwrap_err().to_string();
        assert!(err.contains("at least 1 thread"), "{err}");
        assert_eq!(registrar.signing_threads(), Some(3), "unchanged on error");
    }

    #[test]
    fn clones_share_cache_and_pool() {
        let registrar = DkimRegistrar::new(Arc::new(SignerCache::new(4)));
        let clone = registrar.clone();
        clone.set_signing_threads(1).unwrap();
        assert_eq!(registrar.signing_threads(), Some(1));
        assert!(Arc::ptr_eq(&registrar.cache, &clone.cache));
    }
}
