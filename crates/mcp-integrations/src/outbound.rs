//! The outbound guard's dialing side: the one HTTP client every call made for a client goes
//! through (`http.request`, webhook deliveries, VCC repository listings and package downloads).
//!
//! Core's [`Policy`] decides which addresses are forbidden; this module makes sure only checked
//! addresses are dialled. A request's literal host is checked before it is sent
//! ([`OutboundClient::request`]); a host name is resolved by [`GuardedResolver`], which hands the
//! connector only the addresses the policy allows (so a name cannot be re-resolved to another
//! address between check and connect); every redirect hop's literal host is checked by the
//! redirect policy, and its name goes through the same resolver. Proxies from the environment are
//! ignored: a proxy would dial the target itself, past the check.
//!
//! Base URLs the operator configures (LLM, Discord, GitHub, Render, VRChat) are not
//! client-supplied and keep their own clients.

use mcp_core::outbound::{Forbidden, Policy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{ClientBuilder, Method, RequestBuilder, Url};
use std::net::SocketAddr;
use std::sync::Arc;

/// The most redirects one request follows.
pub const MAX_REDIRECTS: usize = 10;

/// A `reqwest::Client` that dials only addresses the outbound policy allows. Cheap to clone
/// (clones share the connection pool).
#[derive(Debug, Clone)]
pub struct OutboundClient {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

/// Whether a client follows redirects (each hop checked) or answers with the 3xx itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    Follow,
    Refuse,
}

impl OutboundClient {
    /// Builds the client from `builder` (user agent, timeouts…) with the guard's resolver,
    /// redirect policy and no proxy set last, so nothing configured before can undo them.
    pub fn build(
        policy: Arc<Policy>,
        builder: ClientBuilder,
        redirects: Redirects,
    ) -> Result<OutboundClient, reqwest::Error> {
        let redirect = match redirects {
            Redirects::Follow => guarded_redirects(policy.clone()),
            Redirects::Refuse => reqwest::redirect::Policy::none(),
        };
        let client = builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .redirect(redirect)
            .build()?;
        Ok(OutboundClient { client, policy })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A request to `url`, refused when its host is a forbidden address (names are checked on
    /// resolution).
    pub fn request(&self, method: Method, url: Url) -> Result<RequestBuilder, Forbidden> {
        self.policy.check_url(&url)?;
        Ok(self.client.request(method, url))
    }

    /// A GET of `url`, see [`OutboundClient::request`].
    pub fn get(&self, url: Url) -> Result<RequestBuilder, Forbidden> {
        self.request(Method::GET, url)
    }
}

/// The guard's refusal inside a reqwest error (from the resolver or the redirect policy), if
/// that is why the request failed.
pub fn forbidden_in(err: &reqwest::Error) -> Option<&Forbidden> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(forbidden) = cause.downcast_ref::<Forbidden>() {
            return Some(forbidden);
        }
        source = cause.source();
    }
    None
}

/// Follows at most [`MAX_REDIRECTS`] hops, refusing one whose host is a forbidden address or
/// whose scheme is not http(s).
fn guarded_redirects(policy: Arc<Policy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        if !matches!(attempt.url().scheme(), "http" | "https") {
            return attempt.error("a redirect may only lead to http or https");
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(forbidden) => attempt.error(forbidden),
        }
    })
}

/// Resolves names with the system resolver and keeps only the addresses the policy allows; a
/// name with none left fails with the first [`Forbidden`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = filter_allowed(&policy, &host, resolved)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The addresses of `host` the policy allows (all of them for an allowed name); an error when
/// none is left.
fn filter_allowed(
    policy: &Policy,
    host: &str,
    resolved: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    if resolved.is_empty() {
        return Err(format!("{host} has no addresses").into());
    }
    if policy.allows_host(host) {
        return Ok(resolved);
    }
    let mut refused = None;
    let mut allowed = Vec::with_capacity(resolved.len());
    for addr in resolved {
        match policy.check_ip(host, addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(forbidden) => {
                refused.get_or_insert(forbidden);
            }
        }
    }
    match refused {
        Some(forbidden) if allowed.is_empty() => Err(Box::new(forbidden)),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn resolver_keeps_only_allowed_addresses() {
        let policy = Policy::default();
        let kept = filter_allowed(
            &policy,
            "mixed.example",
            vec![addr("127.0.0.1:0"), addr("93.184.216.34:0")],
        )
        .unwrap();
        assert_eq!(kept, vec![addr("93.184.216.34:0")]);
        let err = filter_allowed(
            &policy,
            "localhost",
            vec![addr("[::1]:0"), addr("127.0.0.1:0")],
        )
        .unwrap_err();
        assert!(err.downcast_ref::<Forbidden>().is_some(), "{err}");
        let allowed = Policy::new(false, &["localhost".into()]).unwrap();
        assert_eq!(
            filter_allowed(&allowed, "localhost", vec![addr("127.0.0.1:0")]).unwrap(),
            vec![addr("127.0.0.1:0")]
        );
    }

    #[tokio::test]
    async fn refuses_literal_forbidden_hosts_before_sending() {
        let client = OutboundClient::build(
            Arc::new(Policy::default()),
            reqwest::Client::builder(),
            Redirects::Follow,
        )
        .unwrap();
        for url in [
            "http://127.0.0.1:1/",
            "http://2130706433/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            assert!(client.get(Url::parse(url).unwrap()).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_fails_with_forbidden() {
        let client = OutboundClient::build(
            Arc::new(Policy::default()),
            reqwest::Client::builder(),
            Redirects::Follow,
        )
        .unwrap();
        let err = client
            .get(Url::parse("http://localhost:1/").unwrap())
            .unwrap()
            .send()
            .await
            .unwrap_err();
        let forbidden = forbidden_in(&err).expect("the guard's refusal");
        assert_eq!(forbidden.range, "loopback");
    }
}
