//! `kumo.http.build_url`: append query parameters to a base URL.

use url::Url;

/// Parse `base` and append `params` as query parameters (form-encoded),
/// after any query the base already has. Parameters are appended sorted by
/// name, then value, so the result does not depend on Lua's table order.
pub fn build_url(base: &str, mut params: Vec<(String, String)>) -> Result<String, String> {
    let mut url = Url::parse(base).map_err(|err| format!("invalid URL '{base}': {err}"))?;
    if !params.is_empty() {
        params.sort();
        url.query_pairs_mut().extend_pairs(params);
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn appends_after_existing_query() {
        assert_eq!(
            build_url(
                "https://example.com/?existing=value",
                pairs(&[("b", "2"), ("a", "1")])
            )
            .unwrap(),
            "https://example.com/?existing=value&a=1&b=2"
        );
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(
            build_url("http://h/p", pairs(&[("q", "a b&c=d"), ("ü", "é")])).unwrap(),
            "http://h/p?q=a+b%26c%3Dd&%C3%BC=%C3%A9"
        );
    }

    #[test]
    fn no_params_keeps_the_url() {
        assert_eq!(build_url("http://h/p", Vec::new()).unwrap(), "http://h/p");
    }

    #[test]
    fn bad_base_is_an_error() {
        let err = build_url("not a url", Vec::new()).unwrap_err();
        assert!(err.contains("invalid URL 'not a url'"), "{err}");
    }
}
