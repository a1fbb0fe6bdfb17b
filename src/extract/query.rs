//! Keys in a query parameter (opt-in): reading the parameter and removing it from the URI.

use http::Uri;

/// The non-empty values of the query parameter `name`.
pub(super) fn query_values<'a, 'n>(
    uri: &'a Uri,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// `uri` without the parameter `name`; `None` if it has no such parameter.
pub(super) fn without_query_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_other = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) != name;
    if query.split('&').all(|pair| is_other(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(is_other).collect();
    let path = uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).ok()
}
