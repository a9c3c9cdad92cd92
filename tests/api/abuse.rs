//! Password guessing and floods: lockout, per-address limits, bounded hashing, and timing.

use std::time::{Duration, Instant};

use tonic::Code;
use watchword::{pb::auth::v1 as pb, reason::Reason};

use crate::helpers::*;

/// The flood and the timing test each load both cores on purpose; run concurrently they would measure each
/// other. They take turns; every other test still runs in parallel.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn fifty_parallel_wrong_guesses_cannot_exceed_the_lockout_threshold() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    let guesses = (0..50).map(|i| {
        app.login(
            "alice",
            if i % 2 == 0 {
                "wrong guess one"
            } else {
                "wrong guess two"
            },
        )
    });
    let results = join_all(guesses).await;
    let checked = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    let locked = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert!(results.iter().all(Result::is_err), "a wrong guess succeeded");
    // The default threshold is 5: at most 5 guesses were ever checked against the hash.
    assert!(checked <= 5, "{checked} guesses were checked");
    let others: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| !matches!(s.code(), Code::Unauthenticated | Code::ResourceExhausted))
        .collect();
    assert!(others.is_empty(), "unexpected refusals: {others:?}");
    // The rest were turned away without a hash check: locked out (or shed as overload).
    assert_eq!(checked + locked, 50);

    // While locked, even the right password waits, with a RetryInfo delay.
    let status = assert_reason(
        app.login("alice", PASSWORD).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
    let wait = watchword::reason::retry_after(&status).expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(15 * 60),
        "{wait:?}"
    );
}

#[tokio::test]
async fn unknown_usernames_are_throttled_exactly_like_real_ones() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    let mut outcomes = Vec::new();
    for username in ["alice", "mallory"] {
        let mut codes = Vec::new();
        for _ in 0..7 {
            codes.push(app.login(username, "not the password").await.unwrap_err().code());
        }
        outcomes.push(codes);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[0][..5], [Code::Unauthenticated; 5]);
    assert_eq!(outcomes[0][5], Code::ResourceExhausted);
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_count() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    for _ in 0..3 {
        assert_code(
            app.login("alice", "not the password").await,
            Code::Unauthenticated,
        );
    }
    app.login("alice", PASSWORD).await.unwrap();
    for _ in 0..4 {
        assert_code(
            app.login("alice", "not the password").await,
            Code::Unauthenticated,
        );
    }
    app.login("alice", PASSWORD)
        .await
        .expect("four failures after a reset do not lock");
}

#[tokio::test]
async fn one_address_cannot_flood_login_and_register() {
    let app = TestApp::builder()
        .auth(|settings| {
            settings.peer_rate = 0.01;
            settings.peer_burst = 3;
        })
        .start()
        .await;
    for name in ["alice", "bob", "carol"] {
        app.register(name).await.unwrap();
    }
    let status = assert_reason(
        app.register("dave").await,
        Code::ResourceExhausted,
        Reason::RateLimited,
    );
    let wait = watchword::reason::retry_after(&status).unwrap();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(100),
        "{wait:?}"
    );
    assert_reason(
        app.login("alice", PASSWORD).await,
        Code::ResourceExhausted,
        Reason::RateLimited,
    );
    // Validate is not rate limited.
    assert_code(app.validate("a.b.c").await, Code::Unauthenticated);
}

#[tokio::test]
async fn a_login_flood_is_shed_instead_of_queued_and_validate_stays_fast() {
    let _turn = HEAVY.lock().await;
    let app = TestApp::builder().no_throttling().start().await;
    app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;

    let at_rest = validate_latencies(&app, &token, 200).await;

    // 64 clients logging in as fast as they can, for as long as the measurement runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..64 {
        let (auth, stop) = (app.auth.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let (mut ok, mut shed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = pb::LoginRequest {
                    username: "alice".into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                };
                match auth.clone().login(request).await {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => shed += 1,
                    Err(s) => panic!("unexpected {s:?}"),
                }
            }
            (ok, shed)
        }));
    }
    let during = validate_latencies(&app, &token, 200).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut shed) = (0, 0);
    for task in flood {
        let (o, s) = task.await.unwrap();
        ok += o;
        shed += s;
    }
    let (rest_p99, flood_p99) = (p99(at_rest), p99(during));
    println!(
        "validate p99 at rest {rest_p99:?}, during login flood {flood_p99:?}; logins ok {ok}, shed {shed}"
    );
    assert!(ok > 0, "some logins must get through");
    assert!(shed > 0, "the excess must be shed, not queued");
    // Generous: hashing is bounded to the cores, so Validate keeps a slot; queued behind the flood it would
    // take seconds. The bound leaves room for a debug build on PostgreSQL sharing two cores with the rest of
    // the suite (~0.4 s seen alone there). Benchmarks hold the real target (release, p99 ratio ≤ 3).
    assert!(
        flood_p99 < Duration::from_secs(1),
        "validate p99 during flood {flood_p99:?}"
    );
}

async fn validate_latencies(app: &TestApp, token: &str, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        app.validate(token).await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[tokio::test]
async fn unknown_user_and_wrong_password_take_the_same_time() {
    let _turn = HEAVY.lock().await;
    let app = TestApp::builder().no_throttling().start().await;
    app.register("alice").await.unwrap();
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    // Interleaved, so drift in machine load affects both alike.
    for _ in 0..200 {
        for (username, samples) in [("alice", &mut wrong), ("ghost", &mut unknown)] {
            let started = Instant::now();
            assert_code(
                app.login(username, "not the password").await,
                Code::Unauthenticated,
            );
            samples.push(started.elapsed());
        }
    }
    let (unknown, wrong) = (median(unknown), median(wrong));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    println!("median login: unknown user {unknown:?}, wrong password {wrong:?}, ratio {ratio:.3}");
    // The oracle this guards against is skipping (ratio ~0.05) or repeating (~2) the argon2 work for one
    // case. The bounds sit far from both but well outside scheduling noise: on a shared 2-core CI machine,
    // with the rest of the suite running beside this test, medians of identical work differed by 10 %.
    assert!(
        (0.67..=1.5).contains(&ratio),
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
