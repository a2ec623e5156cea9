//! Secrets never reach logs or admin API output: the Redis password inside
//! `--redis`, the push and admin tokens, app keys, the token secret, and the
//! credentials a device presents (right or wrong), at every log level.
//!
//! The test runs miopd at `MIOP_LOG=trace` (fred's and hyper's logs
//! included) through everything that logs: start, binds with good and bad
//! credentials, pushes with good and bad tokens, every admin endpoint, Redis
//! killed (warnings naming Redis) and back. Then it searches the whole log,
//! stdout and every HTTP answer for each secret.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::{Miopd, Options, ADMIN_TOKEN, KEY};
use miop::protocol::Credential;

const REDIS_PASSWORD: &str = "redis-pw-7f3a91c2";
const PUSH_TOKEN: &str = "push-tok-5be0d4e8";
const APP_KEY: &str = "app-key-c0ffee11";
const TOKEN_SECRET: &str = "token-secret-9d2e7b40";
const WRONG_KEY: &str = "wrong-key-1234abcd";
const WRONG_TOKEN: &str = "wrong-push-tok-77aa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_answers_at_trace_level() {
    let mut redis = Redis::start_with_password(REDIS_PASSWORD);
    let url = redis.url();
    assert!(url.contains(REDIS_PASSWORD));
    let gw = Miopd::start_with(Options {
        args: [
            "--cores",
            "2",
            "--redis",
            &url,
            "--node-id",
            "secrets",
            "--presence-lease",
            "3s",
            "--push-token",
            PUSH_TOKEN,
            "--app-key",
            APP_KEY,
            "--token-secret",
            TOKEN_SECRET,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: vec![("MIOP_LOG".into(), "trace".into())],
        ..Options::default()
    });
    let answers = std::cell::RefCell::new(String::new());
    let get = |path: &str, token: Option<&str>| {
        let (status, body) = gw.try_get_as(path, token).expect("admin answers");
        answers
            .borrow_mut()
            .push_str(&format!("{path} {status} {body}\n"));
        status
    };
    common::wait_until(Duration::from_secs(20), "connected to Redis", || {
        get("/healthz", None) == 200 && gw.metric("miop_redis_up") == Some(1.0)
    });

    // Devices: one with the app key, one with a wrong key, one with a token
    // that is not valid.
    let mut good = gw.client().await;
    good.bind("dev-good", Credential::AppKey(APP_KEY.into()), vec![])
        .await
        .expect("bind with the app key");
    let mut bad = gw.client().await;
    assert!(bad
        .bind("dev-bad", Credential::AppKey(WRONG_KEY.into()), vec![])
        .await
        .is_err());
    let mut bad_token = gw.client().await;
    assert!(bad_token
        .bind("dev-tok", Credential::Token(WRONG_KEY.into()), vec![])
        .await
        .is_err());

    // Pushes with the right and a wrong token; admin reads with each token.
    for token in [PUSH_TOKEN, WRONG_TOKEN, ADMIN_TOKEN] {
        let (status, body) = gw.post(
            "/v1/push",
            r#"{"to": {"device": "dev-good"}, "payload": "hi"}"#,
            Some(token),
        );
        answers
            .borrow_mut()
            .push_str(&format!("push {status} {body}\n"));
    }
    for path in [
        "/v1/sessions/dev-good",
        "/v1/presence/dev-good",
        "/v1/consistency",
    ] {
        for token in [Some(ADMIN_TOKEN), Some(WRONG_TOKEN), None] {
            get(path, token);
        }
    }
    get("/metrics", None);

    // Redis goes away and comes back: the warnings name Redis.
    redis.kill();
    common::wait_until(Duration::from_secs(20), "Redis seen down", || {
        gw.metric("miop_redis_up") == Some(0.0)
    });
    get("/healthz", None);
    get("/v1/consistency", Some(ADMIN_TOKEN));
    redis.restart();
    common::wait_until(Duration::from_secs(30), "Redis seen up again", || {
        gw.metric("miop_redis_up") == Some(1.0)
    });
    get("/healthz", None);

    let answers = answers.into_inner();
    let log = gw.log_text();
    assert!(
        log.matches("TRACE").count() > 10,
        "the log is at trace level"
    );
    assert!(
        log.contains("127.0.0.1:") && log.contains("Redis"),
        "the log talks about Redis"
    );
    for secret in [
        REDIS_PASSWORD,
        PUSH_TOKEN,
        ADMIN_TOKEN,
        APP_KEY,
        KEY,
        TOKEN_SECRET,
        WRONG_KEY,
        WRONG_TOKEN,
    ] {
        // KEY ("pk") is too short to search for in a log.
        if secret.len() < 8 {
            continue;
        }
        if let Some(i) = log.find(secret) {
            let from = log[..i].rfind('\n').map_or(0, |n| n + 1);
            let to = log[i..].find('\n').map_or(log.len(), |n| i + n);
            panic!("secret {secret:?} in the log: {}", &log[from..to]);
        }
        assert!(
            !answers.contains(secret),
            "secret {secret:?} in an admin answer:\n{answers}"
        );
    }
    println!(
        "searched {} bytes of trace log and {} bytes of admin answers for 7 secrets: none found",
        log.len(),
        answers.len()
    );
}

#[test]
fn an_invalid_redis_url_is_reported_without_its_password() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_miopd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--app-key",
            "k",
            "--redis",
            &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:notaport"),
        ])
        .env("MIOP_LOG", "trace")
        .output()
        .expect("run miopd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("invalid --redis URL"), "{text}");
    assert!(!text.contains(REDIS_PASSWORD), "{text}");
}
