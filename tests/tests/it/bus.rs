//! The Redis bus between the control plane and the pods.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_common::bus::{Bus, BusEvent, Notice, RedisBus};
use quiver_common::domain::ProjectId;
use quiver_tests::redis::SilentProxy;

/// Waits until `events` holds one that `wanted` picks, or fails after `within`.
async fn heard(events: &Mutex<Vec<BusEvent>>, within: Duration, what: &str, wanted: impl Fn(&BusEvent) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !events.lock().expect("never poisoned").iter().any(&wanted) {
        assert!(tokio::time::Instant::now() < deadline, "never heard {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A subscription whose connection went dead without closing (a network fault: no
/// FIN, no RST) is found out by its pings: the pod subscribes again, tells its
/// listeners it may have missed notices, and hears the ones sent after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gone_silent_is_noticed_and_made_again() {
    let url = quiver_tests::redis::url().await;
    let prefix = quiver_tests::redis::prefix();
    let proxy = SilentProxy::start(&url).await;
    let pod = RedisBus::connect(&proxy.url, &prefix).await.expect("the pod's bus");
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard_by_pod = Arc::clone(&events);
    pod.listen(Arc::new(move |event: &BusEvent| {
        heard_by_pod.lock().expect("never poisoned").push(event.clone())
    }));
    let control = RedisBus::connect(&url, &prefix).await.expect("the control plane's bus");
    let revoked = |key_id: &str| Notice::KeyRevoked {
        project_id: ProjectId::new(),
        key_id: key_id.to_owned(),
    };
    let notice = |key: &'static str| move |event: &BusEvent| matches!(event, BusEvent::Notice(Notice::KeyRevoked { key_id, .. }) if key_id == key);

    control.publish(revoked("before")).await.expect("publish");
    heard(&events, Duration::from_secs(10), "the first notice", notice("before")).await;

    proxy.go_silent();
    heard(
        &events,
        Duration::from_secs(30),
        "that it may have missed notices",
        |event| matches!(event, BusEvent::MayHaveMissed),
    )
    .await;
    control.publish(revoked("after")).await.expect("publish");
    heard(
        &events,
        Duration::from_secs(10),
        "the notice sent after",
        notice("after"),
    )
    .await;
}

/// A Redis that answers and refuses the connection (a wrong password) stops a pod at
/// start, saying what to check: no retry would mend it. (One that cannot be reached is
/// waited for: `limits::cluster::pods_start_while_redis_is_down_and_join_it_when_it_comes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_the_connection_stops_a_pod_at_start() {
    let mut url = url::Url::parse(&quiver_tests::redis::url().await).expect("a URL");
    url.set_username("quiver-no-such-user").expect("a user");
    url.set_password(Some("wrong")).expect("a password");
    let prefix = quiver_tests::redis::prefix();
    for refused in [
        RedisBus::connect(url.as_str(), &prefix).await.err(),
        quiver_data_plane::limits::RedisBudget::connect(url.as_str(), &prefix, 1)
            .await
            .err(),
    ] {
        let err = refused.expect("refused at start");
        assert!(format!("{err:#}").contains("check REDIS_URL"), "{err:#}");
    }
}
