//! Redaction of secrets inside URLs, for logs and error messages.
//!
//! `--redis redis://user:PASSWORD@host:6379/0` carries a password; everything
//! that prints the URL prints `redact_url(url)` instead. Hand-written rather
//! than through the `url` crate because it must also redact what does not
//! parse (an invalid URL still ends up in an error message).

/// The URL with the password of its user-info replaced by `***` (or the
/// whole user-info, when it is a bare secret such as `redis://SECRET@host`),
/// and the values of `password=`/`pass=`/`token=` query parameters too.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => format!("***{host}"),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if ["password", "pass", "token", "secret"]
                            .contains(&k.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{k}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive() {
        for (given, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "redis://app:s3cret@h:6379?protocol=resp3",
                "redis://app:***@h:6379?protocol=resp3",
            ),
            ("redis://s3cret@h", "redis://***@h"),
            ("rediss://a:p@ss:w@rd@h:1", "rediss://a:***@h:1"),
            (
                "redis-cluster://h:1?password=s3cret&x=1",
                "redis-cluster://h:1?password=***&x=1",
            ),
            ("not a url:s3cret@x", "not a url:***@x"),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
            assert!(!redact_url(given).contains("s3cret"));
        }
    }
}
