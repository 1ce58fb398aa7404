//! Token scopes (`type:name:actions`) and the `/v2/auth` request transformation
//! (COMPAT.md §4.2; SECURITY.md §2.10).
//!
//! [`transform`] rewrites one client scope for the upstream (registry prefix removed, Docker Hub
//! `library/`, pull only unless `allow_push`); [`split_scopes`] and [`query_scopes`] collect the
//! client's scopes; [`token_query`] and [`transform_form`] build the GET URL and the POST body of
//! the token request. Nothing here chooses the realm or checks it against the allowlist.

/// Most scopes accepted in one token request.
pub const MAX_SCOPES: usize = 32;

/// Longest single scope kept (a repository name is at most 255 bytes; room for type, a
/// `host:port/` prefix and actions). Longer scopes are dropped by [`split_scopes`].
pub const MAX_SCOPE_LEN: usize = 1024;

/// Largest `/v2/auth` POST form accepted (COMPAT.md §4.2).
pub const MAX_FORM_LEN: usize = 16 * 1024;

/// A parsed scope. `type` runs to the first `:`, actions start after the last `:`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// `repository`, `registry`, ...
    pub kind: String,
    /// Resource name (may contain `host:port`).
    pub name: String,
    /// Actions in order.
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses one scope; `None` when it has fewer than two `:`.
    ///
    /// An empty action list (`repository:x:`) parses to no actions; otherwise actions are split
    /// on `,` as written, so [`Display`](core::fmt::Display) gives back the input.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, name, actions) = split3(s)?;
        let actions = if actions.is_empty() {
            Vec::new()
        } else {
            actions.split(',').map(str::to_owned).collect()
        };
        Some(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// True for a `repository` scope, with or without a resource class (`repository(plugin)`),
    /// compared case-insensitively: the only type whose name and actions are transformed.
    pub fn is_repository(&self) -> bool {
        is_repository_kind(&self.kind)
    }
}

impl core::fmt::Display for Scope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

fn is_repository_kind(kind: &str) -> bool {
    let base = kind.split_once('(').map_or(kind, |(base, _)| base);
    base.eq_ignore_ascii_case("repository")
}

/// Splits `type:name:actions` at the first and the last `:`.
fn split3(s: &str) -> Option<(&str, &str, &str)> {
    let first = s.find(':')?;
    let last = s.rfind(':')?;
    if first == last {
        return None;
    }
    Some((s.get(..first)?, s.get(first + 1..last)?, s.get(last + 1..)?))
}

/// How to transform client scopes for one registry.
#[derive(Clone, Copy, Debug)]
pub struct ScopeRules<'a> {
    /// Canonical registry name and its aliases, removed as a `<registry>/` name prefix.
    pub registry_names: &'a [&'a str],
    /// Docker Hub: single-component names get `library/`.
    pub docker_hub: bool,
    /// Keep push actions (`allow_push`), else repository actions become `pull`.
    pub allow_push: bool,
}

/// Transforms one scope string. Unparsable scopes pass through unchanged.
///
/// For `repository` scopes only (see [`Scope::is_repository`]): one `<registry>/` prefix naming this registry (any of
/// [`ScopeRules::registry_names`], case-insensitively) is removed, then on Docker Hub a name
/// without `/` becomes `library/<name>`; unless `allow_push`, a non-empty action list becomes
/// exactly `pull`. Other types (`registry:catalog:*`) are unchanged.
pub fn transform(scope: &str, rules: &ScopeRules<'_>) -> String {
    let Some(mut parsed) = Scope::parse(scope) else {
        return scope.to_owned();
    };
    if !parsed.is_repository() {
        return scope.to_owned();
    }
    let stripped = match parsed.name.split_once('/') {
        Some((first, rest))
            if !rest.is_empty()
                && rules
                    .registry_names
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(first)) =>
        {
            Some(rest.to_owned())
        }
        _ => None,
    };
    if let Some(rest) = stripped {
        parsed.name = rest;
    }
    if rules.docker_hub && !parsed.name.is_empty() && !parsed.name.contains('/') {
        parsed.name.insert_str(0, "library/");
    }
    if !rules.allow_push && !parsed.actions.is_empty() {
        parsed.actions = vec!["pull".to_owned()];
    }
    parsed.to_string()
}

/// Splits every `scope` value (repeated parameters and space-separated values) into single
/// scopes, in order, capped at [`MAX_SCOPES`]. Empty pieces and scopes longer than
/// [`MAX_SCOPE_LEN`] are skipped.
pub fn split_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    values
        .into_iter()
        .flat_map(str::split_ascii_whitespace)
        .filter(|s| s.len() <= MAX_SCOPE_LEN)
        .take(MAX_SCOPES)
        .collect()
}

/// Every client scope of a raw `/v2/auth` query string (`scope=A&scope=B`, `scope=A%20B`,
/// `scope=A+B`), percent-decoded, split by [`split_scopes`].
pub fn query_scopes(query: &str) -> Vec<String> {
    let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .take(MAX_SCOPES)
        .collect();
    split_scopes(values.iter().map(String::as_str))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The registry prefix of the first repository scope whose name starts with a known registry
/// name (`repository:ghcr.io/owner/img:pull` → `ghcr.io`), used to route `/v2/auth` on a mirror
/// host.
pub fn registry_prefix<'a>(
    scopes: &[&'a str],
    is_registry: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    scopes.iter().find_map(|s| {
        let (kind, name, _) = split3(s)?;
        if !is_repository_kind(kind) {
            return None;
        }
        let (first, rest) = name.split_once('/')?;
        (!rest.is_empty() && is_registry(first)).then_some(first)
    })
}

/// Builds the GET token request URL: the realm with its own query kept, then `service` (from the
/// upstream challenge, omitted when it has none), one `scope` parameter per scope in order, then
/// `other` (the client's remaining parameters, see [`passthrough_params`]). Any fragment is
/// dropped.
pub fn token_query(
    realm: &url::Url,
    service: Option<&str>,
    scopes: &[String],
    other: &[(String, String)],
) -> url::Url {
    let mut url = realm.clone();
    url.set_fragment(None);
    if service.is_some() || !scopes.is_empty() || !other.is_empty() {
        let mut q = url.query_pairs_mut();
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        for scope in scopes {
            q.append_pair("scope", scope);
        }
        for (k, v) in other {
            q.append_pair(k, v);
        }
    }
    url
}

/// The client's `/v2/auth` query parameters minus `scope`, `service` and `ns`, percent-decoded
/// and in order (`account`, `client_id`, `offline_token`, ...).
pub fn passthrough_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !matches!(k.as_ref(), "scope" | "service" | "ns"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Why a `/v2/auth` POST form was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormError(pub &'static str);

impl core::fmt::Display for FormError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unusable token form: {}", self.0)
    }
}

impl std::error::Error for FormError {}

/// Transforms an `application/x-www-form-urlencoded` `/v2/auth` POST body for the realm.
///
/// `service` is replaced by the upstream's (at the place of the client's first one, else
/// appended; dropped when the upstream has none); every `scope` value (space-separated) is
/// transformed with [`transform`] (at most [`MAX_SCOPES`] in all); `ns` is dropped. Every other
/// field (`grant_type`, `username`, `password`, `refresh_token`, `client_id`, `access_type`, ...)
/// is kept byte for byte, so a password is never re-encoded.
pub fn transform_form(
    form: &[u8],
    service: Option<&str>,
    rules: &ScopeRules<'_>,
) -> Result<Vec<u8>, FormError> {
    if form.len() > MAX_FORM_LEN {
        return Err(FormError("form too large"));
    }
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut service_done = false;
    let mut scopes_left = MAX_SCOPES;
    for raw in form.split(|&b| b == b'&').filter(|f| !f.is_empty()) {
        // One field yields exactly one decoded pair.
        let Some((name, value)) = form_urlencoded::parse(raw).next() else {
            continue;
        };
        match name.as_ref() {
            "ns" => {}
            "service" => {
                if let (false, Some(s)) = (service_done, service) {
                    fields.push(encode_pair("service", s));
                }
                service_done = true;
            }
            "scope" => {
                let scopes: Vec<String> = split_scopes([value.as_ref()])
                    .into_iter()
                    .take(scopes_left)
                    .map(|s| transform(s, rules))
                    .collect();
                scopes_left -= scopes.len();
                if !scopes.is_empty() {
                    fields.push(encode_pair("scope", &scopes.join(" ")));
                }
            }
            _ => fields.push(raw.to_vec()),
        }
    }
    if let (false, Some(s)) = (service_done, service) {
        fields.push(encode_pair("service", s));
    }
    Ok(fields.join(&b'&'))
}

fn encode_pair(name: &str, value: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: ScopeRules<'static> = ScopeRules {
        registry_names: &["docker.io", "registry-1.docker.io"],
        docker_hub: true,
        allow_push: false,
    };
    const GHCR: ScopeRules<'static> = ScopeRules {
        registry_names: &["ghcr.io"],
        docker_hub: false,
        allow_push: false,
    };

    #[test]
    fn parse_first_and_last_colon() {
        let s = Scope::parse("repository:localhost:5000/foo:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "localhost:5000/foo");
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(s.to_string(), "repository:localhost:5000/foo:pull,push");
        assert_eq!(Scope::parse("repository:foo"), None);
        assert_eq!(Scope::parse("nocolon"), None);
        assert_eq!(
            Scope::parse("repository:x:").unwrap().actions,
            Vec::<String>::new()
        );
        assert_eq!(
            Scope::parse("a:b:pull,,push").unwrap().to_string(),
            "a:b:pull,,push"
        );
    }

    #[test]
    fn transform_hub() {
        assert_eq!(
            transform("repository:busybox:pull", &HUB),
            "repository:library/busybox:pull"
        );
        assert_eq!(
            transform("repository:docker.io/busybox:pull", &HUB),
            "repository:library/busybox:pull"
        );
        assert_eq!(
            transform("repository:Docker.IO/foo/bar:pull", &HUB),
            "repository:foo/bar:pull"
        );
        assert_eq!(
            transform("repository:library/busybox:*", &HUB),
            "repository:library/busybox:pull"
        );
        assert_eq!(
            transform("repository:busybox:", &HUB),
            "repository:library/busybox:"
        );
        assert_eq!(transform("registry:catalog:*", &HUB), "registry:catalog:*");
        assert_eq!(
            transform("Repository:foo/bar:push", &HUB),
            "Repository:foo/bar:pull"
        );
        assert_eq!(
            transform("repository(plugin):vieux/sshfs:push", &HUB),
            "repository(plugin):vieux/sshfs:pull"
        );
        assert_eq!(transform("garbage", &HUB), "garbage");
    }

    #[test]
    fn transform_prefix_only_own_registry() {
        assert_eq!(
            transform("repository:ghcr.io/owner/img:pull", &GHCR),
            "repository:owner/img:pull"
        );
        assert_eq!(
            transform("repository:quay.io/owner/img:pull", &GHCR),
            "repository:quay.io/owner/img:pull"
        );
        // Only one prefix is removed, and never down to an empty name.
        assert_eq!(
            transform("repository:ghcr.io/ghcr.io/x:pull", &GHCR),
            "repository:ghcr.io/x:pull"
        );
        assert_eq!(
            transform("repository:ghcr.io/:pull", &GHCR),
            "repository:ghcr.io/:pull"
        );
    }

    #[test]
    fn transform_allow_push_keeps_actions() {
        let rules = ScopeRules {
            allow_push: true,
            ..GHCR
        };
        assert_eq!(
            transform("repository:foo/bar:pull,push", &rules),
            "repository:foo/bar:pull,push"
        );
    }

    #[test]
    fn split_and_cap() {
        assert_eq!(
            split_scopes(["a:b:c  d:e:f", "", "g:h:i"]),
            ["a:b:c", "d:e:f", "g:h:i"]
        );
        let many = vec!["x:y:z"; MAX_SCOPES + 5];
        assert_eq!(split_scopes(many).len(), MAX_SCOPES);
        let long = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_LEN));
        assert_eq!(split_scopes([long.as_str(), "a:b:c"]), ["a:b:c"]);
    }

    #[test]
    fn query_scopes_decode() {
        assert_eq!(
            query_scopes(
                "scope=repository%3Aa%3Apull%20repository:b:pull&service=x&scope=registry:catalog:*+c:d:e"
            ),
            [
                "repository:a:pull",
                "repository:b:pull",
                "registry:catalog:*",
                "c:d:e"
            ]
        );
    }

    #[test]
    fn prefix_of_first_repository_scope() {
        let is_reg = |s: &str| matches!(s, "ghcr.io" | "docker.io");
        assert_eq!(
            registry_prefix(
                &["registry:catalog:*", "repository:ghcr.io/o/i:pull"],
                is_reg
            ),
            Some("ghcr.io")
        );
        assert_eq!(
            registry_prefix(
                &["repository:foo/bar:pull", "repository:docker.io/x:pull"],
                is_reg
            ),
            Some("docker.io")
        );
        assert_eq!(registry_prefix(&["repository:busybox:pull"], is_reg), None);
        assert_eq!(registry_prefix(&["repository:ghcr.io/:pull"], is_reg), None);
    }

    #[test]
    fn token_query_keeps_realm_query() {
        let realm = url::Url::parse("https://t.example/token?a=1#frag").unwrap();
        let u = token_query(
            &realm,
            Some("svc"),
            &["repository:x/y:pull".to_owned()],
            &[("account".into(), "u".into())],
        );
        assert_eq!(
            u.as_str(),
            "https://t.example/token?a=1&service=svc&scope=repository%3Ax%2Fy%3Apull&account=u"
        );
        let bare = url::Url::parse("https://t.example/token").unwrap();
        assert_eq!(
            token_query(&bare, None, &[], &[]).as_str(),
            "https://t.example/token"
        );
    }

    #[test]
    fn passthrough_filters() {
        assert_eq!(
            passthrough_params(
                "ns=ghcr.io&account=a%20b&scope=x&service=s&client_id=docker&offline_token=true"
            ),
            vec![
                ("account".to_owned(), "a b".to_owned()),
                ("client_id".to_owned(), "docker".to_owned()),
                ("offline_token".to_owned(), "true".to_owned())
            ]
        );
    }

    #[test]
    fn form_transformed() {
        let form = b"grant_type=password&username=u&password=p%26%C3%A9%FF&service=x&ns=docker.io&client_id=ctr\
                     &scope=repository%3Abusybox%3Apull%2Cpush+registry%3Acatalog%3A*&access_type=offline";
        let out = transform_form(form, Some("registry.docker.io"), &HUB).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "grant_type=password&username=u&password=p%26%C3%A9%FF&service=registry.docker.io&client_id=ctr\
             &scope=repository%3Alibrary%2Fbusybox%3Apull+registry%3Acatalog%3A*&access_type=offline"
        );
    }

    #[test]
    fn form_service_appended_or_dropped() {
        let out = transform_form(
            b"grant_type=refresh_token&refresh_token=r",
            Some("s"),
            &GHCR,
        )
        .unwrap();
        assert_eq!(out, b"grant_type=refresh_token&refresh_token=r&service=s");
        let out = transform_form(b"service=x&service=y&grant_type=password", None, &GHCR).unwrap();
        assert_eq!(out, b"grant_type=password");
        assert!(transform_form(&vec![b'a'; MAX_FORM_LEN + 1], None, &GHCR).is_err());
    }
}
