//! Secrets out of what is shown: URLs with their passwords replaced.

/// A URL with its password replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // scheme://user:password@host → scheme://user:***@host, up to the last `@` (a
    // password may hold one unencoded).
    let mut redacted = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    // …?user=u&password=secret: the parameters that carry one.
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if ["password", "sslpassword"].iter().any(|p| name.eq_ignore_ascii_case(p)) => {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&params.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_hide_the_password_only() {
        assert_eq!(
            redact_url("postgres://quiver:s3cret@db:5432/quiver"),
            "postgres://quiver:***@db:5432/quiver"
        );
        assert_eq!(redact_url("sqlite://./data/quiver.db"), "sqlite://./data/quiver.db");
        assert_eq!(
            redact_url("postgres://quiver:p@ss@word@db:5432/quiver"),
            "postgres://quiver:***@db:5432/quiver",
            "an unencoded @ in the password"
        );
        assert_eq!(
            redact_url("postgres://db/quiver?user=quiver&password=s3cret&sslmode=require"),
            "postgres://db/quiver?user=quiver&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:pw@db/q?sslmode=require&SSLPASSWORD=k"),
            "postgres://u:***@db/q?sslmode=require&SSLPASSWORD=***"
        );
    }
}
