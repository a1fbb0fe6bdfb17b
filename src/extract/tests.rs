use super::*;

fn req(headers: &[(&str, &str)], uri: &str) -> Request<()> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

fn extract(e: &KeyExtractor, r: &Request<()>) -> Result<Option<String>, String> {
    e.extract(r)
        .and_then(|f| match f {
            Some(f) => f
                .check_syntax()
                .map(|()| Some(String::from_utf8_lossy(f.key).into_owned())),
            None => Ok(None),
        })
        .map_err(|r| r.code().to_owned())
}

#[test]
fn bearer_scheme_is_case_insensitive_and_allows_several_spaces() {
    let e = KeyExtractor::new();
    for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR    abc"] {
        assert_eq!(
            extract(&e, &req(&[("authorization", v)], "/")),
            Ok(Some("abc".into())),
            "{v}"
        );
    }
}

#[test]
fn other_schemes_are_not_keys() {
    let e = KeyExtractor::new();
    assert_eq!(
        extract(&e, &req(&[("authorization", "Basic dXNlcjpwdw==")], "/")),
        Ok(None)
    );
    assert_eq!(
        extract(&e, &req(&[("authorization", "Bearerabc")], "/")),
        Ok(None)
    );
    assert_eq!(extract(&e, &req(&[], "/")), Ok(None));
}

#[test]
fn malformed_bearer_is_a_bad_request() {
    let e = KeyExtractor::new();
    for v in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer a\tb",
        "Bearer =abc",
        "Bearer ab=c",
        "Bearer a,b",
    ] {
        assert_eq!(
            extract(&e, &req(&[("authorization", v)], "/")),
            Err("INVALID_REQUEST".into()),
            "{v:?}"
        );
    }
    let mut r = req(&[], "/");
    r.headers_mut().insert(
        AUTHORIZATION,
        http::HeaderValue::from_bytes(b"Bearer \xffabc").expect("obs-text"),
    );
    assert_eq!(extract(&e, &r), Err("INVALID_REQUEST".into()));
}

#[test]
fn a_bearer_scheme_in_any_other_form_is_a_bad_request_not_another_scheme() {
    let e = KeyExtractor::new();
    for v in [
        "Bearer\tabc",
        "bearer\tabc",
        "Bearer\t",
        "Bearer \tabc",
        "Bearer,abc",
        "Bearer:abc",
        "Bearer=abc",
        " Bearer\tabc",
    ] {
        assert_eq!(
            extract(&e, &req(&[("authorization", v)], "/")),
            Err("INVALID_REQUEST".into()),
            "{v:?}"
        );
    }
    // A scheme whose name merely starts with `bearer` is another scheme.
    for v in ["Bearerabc", "Bearer.abc abc", "Bearer_x abc"] {
        assert_eq!(
            extract(&e, &req(&[("authorization", v)], "/")),
            Ok(None),
            "{v:?}"
        );
    }
}

#[test]
fn whitespace_around_the_value_is_not_part_of_it() {
    let e = KeyExtractor::new();
    for v in [" Bearer abc", "Bearer abc ", "\t Bearer  abc \t"] {
        assert_eq!(
            extract(&e, &req(&[("authorization", v)], "/")),
            Ok(Some("abc".into())),
            "{v:?}"
        );
    }
}

#[test]
fn found_debug_never_shows_the_key() {
    let key = "sk_abcdefghjkmnpqrstvwxyz0123456789abcdefghjkmn03241a28583294d698f3d316e08cf140cuser1574ck4u7hf5356e6f";
    let shown = format!(
        "{:?}",
        Found {
            key: key.as_bytes(),
            bearer: true
        }
    );
    assert_eq!(shown, "Found { key: sk_…6e6f, bearer: true }");
    let shown = format!(
        "{:?}",
        Found {
            key: b"hunter2-secret",
            bearer: false
        }
    );
    assert_eq!(shown, "Found { key: <14 bytes>, bearer: false }");
}

#[test]
fn b64token_padding_is_allowed() {
    let e = KeyExtractor::new();
    assert_eq!(
        extract(&e, &req(&[("authorization", "Bearer ab+/c==")], "/")),
        Ok(Some("ab+/c==".into()))
    );
}

#[test]
fn two_different_keys_are_refused_and_the_same_key_twice_is_not() {
    let e = KeyExtractor::new().header(HeaderName::from_static("x-stack-api-key"));
    let two = req(
        &[("authorization", "Bearer aaa"), ("x-stack-api-key", "bbb")],
        "/",
    );
    assert_eq!(extract(&e, &two), Err("INVALID_REQUEST".into()));
    let same = req(
        &[("authorization", "Bearer aaa"), ("x-stack-api-key", "aaa")],
        "/",
    );
    assert_eq!(extract(&e, &same), Ok(Some("aaa".into())));
    let two_auth = req(
        &[
            ("authorization", "Bearer aaa"),
            ("authorization", "Bearer ccc"),
        ],
        "/",
    );
    assert_eq!(extract(&e, &two_auth), Err("INVALID_REQUEST".into()));
}

#[test]
fn configured_header_instead_of_bearer() {
    let e = KeyExtractor::new()
        .bearer(false)
        .header(HeaderName::from_static("x-stack-api-key"));
    assert_eq!(
        extract(&e, &req(&[("authorization", "Bearer aaa")], "/")),
        Ok(None)
    );
    assert_eq!(
        extract(&e, &req(&[("x-stack-api-key", " aaa ")], "/")),
        Ok(Some("aaa".into()))
    );
}

#[test]
fn query_only_when_enabled() {
    let off = KeyExtractor::new();
    assert_eq!(extract(&off, &req(&[], "/x?api_key=aaa")), Ok(None));
    let on = KeyExtractor::new().query_param("api_key");
    assert_eq!(
        extract(&on, &req(&[], "/x?a=1&api_key=aaa")),
        Ok(Some("aaa".into()))
    );
    assert_eq!(
        extract(
            &on,
            &req(&[("authorization", "Bearer bbb")], "/x?api_key=aaa")
        ),
        Err("INVALID_REQUEST".into())
    );
}

#[test]
fn overlong_values_are_refused_before_scanning() {
    let e = KeyExtractor::new().max_key_len(10);
    let long = format!("Bearer {}", "a".repeat(11));
    assert_eq!(
        extract(&e, &req(&[("authorization", &long)], "/")),
        Err("API_KEY_INVALID".into())
    );
    let long_bad = format!("Bearer {}", " a".repeat(20));
    assert_eq!(
        extract(&e, &req(&[("authorization", &long_bad)], "/")),
        Err("API_KEY_INVALID".into())
    );
}

#[test]
fn strip_removes_every_credential() {
    let e = KeyExtractor::new()
        .header(HeaderName::from_static("x-stack-api-key"))
        .query_param("api_key");
    let mut r = req(
        &[
            ("authorization", "Bearer aaa"),
            ("x-stack-api-key", "aaa"),
            ("x-other", "1"),
        ],
        "/p?a=1&api_key=aaa&b=2",
    );
    e.strip(&mut r);
    assert!(r.headers().get(AUTHORIZATION).is_none());
    assert!(r.headers().get("x-stack-api-key").is_none());
    assert_eq!(r.headers()["x-other"], "1");
    assert_eq!(r.uri().to_string(), "/p?a=1&b=2");

    for loose in ["Bearer\taaa", " bearer aaa", "Bearer", "Bearer,aaa"] {
        let mut r = req(&[("authorization", loose)], "/p");
        e.strip(&mut r);
        assert!(r.headers().get(AUTHORIZATION).is_none(), "{loose:?}");
    }

    let mut basic = req(&[("authorization", "Basic xyz")], "/p?api_key=aaa");
    e.strip(&mut basic);
    assert_eq!(basic.headers()[AUTHORIZATION], "Basic xyz");
    assert_eq!(basic.uri().to_string(), "/p");
}
