//! DNS for Tern: resolvers, MX lookup and the site-name algorithm.
//!
//! * [`Resolver`] answers MX, A/AAAA, TXT and PTR queries through hickory
//!   (system or configured) or through in-memory test zones
//!   ([`TestResolver`]), with errors that keep NXDOMAIN, NODATA and
//!   transient failures apart ([`DnsError`]).
//! * [`config`] holds the serde shapes of `kumo.dns.configure_resolver` and
//!   `kumo.dns.configure_test_resolver` (spec §10).
//! * [`mx`] classifies routing domains, builds [`MailExchanger`] values and
//!   caches them ([`MxResolver`], spec §9.1–9.2).
//! * [`site`] renders the site name from an MX host list (spec §9.3).
//!
//! * [`lua`] is the `kumo.dns.*` Lua surface: [`DnsRegistrar`] installs it
//!   in the policy engine, [`DnsHandle`] carries the resolvers it configures.
//!
//! There is no global state: the server creates one [`DnsHandle`], the
//! policy's `init` calls replace the `Arc<MxResolver>` inside it, and the
//! delivery code reads it with [`DnsHandle::current`].

pub mod config;
pub mod error;
pub mod lua;
pub mod mx;
pub mod resolver;
pub mod site;
pub mod test_resolver;

pub use config::{
    NameServer, NameServerProtocol, ResolverConfigParams, ResolverOptions, ResolverSpec,
    TestResolverParams, TestZone,
};
pub use error::DnsError;
pub use lua::{DnsHandle, DnsRegistrar};
pub use mx::{
    Destination, MailExchanger, MtaStsMode, MxResolver, MxSettings, NULL_MX_RESPONSE,
    ResolvedAddress, ResolvedAddresses, classify_domain,
};
pub use resolver::{Answer, IpLookupStrategy, MxRecord, Resolver, fully_qualify, ptr_name};
pub use site::factor_names;
pub use test_resolver::TestResolver;

use std::sync::Arc;

/// Everything the policy can set about DNS, gathered during `init` and
/// turned into an [`MxResolver`] in one step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsConfig {
    /// `None`: hickory from the system configuration.
    pub resolver: Option<ResolverSpec>,
    pub mx: MxSettings,
}

impl DnsConfig {
    /// Build the resolver and its MX layer.
    pub fn build(&self) -> Result<MxResolver, DnsError> {
        let resolver = match &self.resolver {
            Some(spec) => spec.build()?,
            None => Resolver::system()?,
        };
        Ok(MxResolver::new(Arc::new(resolver), self.mx.clone()))
    }
}
