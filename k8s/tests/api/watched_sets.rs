//! `waymark_k8s::watch`: watched sets through closed watches, compaction, an unreachable API
//! server and a restart.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};
use serde_json::json;
use tokio::sync::watch;
use waymark_k8s::watch::{ObjectSet, wait_ready, watch_objects};
use waymark_test_support::kube::{FakeApiServer, RequestFilter};

use super::{DEADLINE, client, eventually, namespace};

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}})).expect("a ConfigMap")
}

fn contents(set: &ObjectSet<ConfigMap>) -> BTreeSet<String> {
    set.objects
        .values()
        .map(|o| format!("{}={}", o.name_any(), o.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default()))
        .collect()
}

/// Waits until `check` holds for the set.
async fn until(
    rx: &mut watch::Receiver<ObjectSet<ConfigMap>>,
    what: &str,
    check: impl FnMut(&ObjectSet<ConfigMap>) -> bool,
) {
    let reached = tokio::time::timeout(DEADLINE, rx.wait_for(check)).await.is_ok_and(|r| r.is_ok());
    assert!(reached, "timed out waiting for {what}; the set holds {:?}", contents(&rx.borrow()));
}

/// Waits until the set holds exactly `want` (`name=value` each).
async fn holds(rx: &mut watch::Receiver<ObjectSet<ConfigMap>>, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    until(rx, &format!("{want:?}"), |set| contents(set) == want).await;
}

#[tokio::test]
async fn a_watched_set_lists_then_follows_changes() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "set-follows").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default());
    let first = wait_ready(&mut rx).await.unwrap();
    assert_eq!(contents(&first), BTreeSet::from(["a=1".to_string()]));
    assert!(first.error.is_none());

    maps.create(&PostParams::default(), &config_map("b", "2")).await.unwrap();
    maps.replace("a", &PostParams::default(), &{
        let mut a = maps.get("a").await.unwrap();
        a.data = Some([("v".to_string(), "3".to_string())].into());
        a
    })
    .await
    .unwrap();
    holds(&mut rx, &["a=3", "b=2"]).await;
    maps.delete("a", &DeleteParams::default()).await.unwrap();
    holds(&mut rx, &["b=2"]).await;
}

#[tokio::test]
async fn closed_watches_resume_from_the_last_version_without_listing_again() {
    let fake = FakeApiServer::shared();
    let client = client(fake);
    let ns = namespace(&client, "set-resumes").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default());
    wait_ready(&mut rx).await.unwrap();
    let is_list = |r: &waymark_test_support::kube::LoggedRequest| {
        path_ns(&r.path) == Some(ns.as_str()) && !r.watch && r.method == "GET"
    };
    let lists_before = fake.requests().iter().filter(|r| is_list(r)).count();

    let watches = RequestFilter::watches().in_namespace(&ns);
    let watch_requests = || fake.requests().iter().filter(|r| r.watch && path_ns(&r.path) == Some(ns.as_str())).count();
    for round in 0..3 {
        // Close a watch that is open, and let the watcher come back before the next round.
        eventually("an open watch", || async { (fake.open_watches(&watches) == 1).then_some(()) }).await;
        fake.close_watches_matching(watches.clone());
        let value = format!("{}", round + 2);
        maps.create(&PostParams::default(), &config_map(&format!("n{round}"), &value)).await.unwrap();
        eventually("the watcher to watch again", || async { (watch_requests() >= round + 2).then_some(()) }).await;
    }
    holds(&mut rx, &["a=1", "n0=2", "n1=3", "n2=4"]).await;
    let requests = fake.requests();
    let lists_after = requests.iter().filter(|r| is_list(r)).count();
    assert_eq!(lists_after, lists_before, "resuming needs no new list");
    let rewatches: Vec<_> = requests.iter().filter(|r| r.watch && path_ns(&r.path) == Some(ns.as_str())).collect();
    assert_eq!(rewatches.len(), 4, "the first watch and three after closes");
    assert!(rewatches.iter().all(|r| r.query_param("resourceVersion").is_some()), "every watch resumes from a version");
}

/// The namespace a request path names.
fn path_ns(path: &str) -> Option<&str> {
    path.split("/namespaces/").nth(1).and_then(|rest| rest.split('/').next())
}

#[tokio::test]
async fn after_a_410_the_set_is_listed_again_and_keeps_its_last_state_meanwhile() {
    let fake = FakeApiServer::start().unwrap();
    let client = client(&fake);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    maps.create(&PostParams::default(), &config_map("b", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default());
    wait_ready(&mut rx).await.unwrap();

    // Make the watcher fall behind: its re-watches fail while history moves on and is
    // compacted, so that resuming is impossible.
    fake.fail_next_matching(usize::MAX, 500, RequestFilter::watches());
    fake.close_watches();
    until(&mut rx, "the failure to show", |set| set.error.is_some()).await;
    assert_eq!(
        contents(&rx.borrow()),
        BTreeSet::from(["a=1".to_string(), "b=1".to_string()]),
        "the last good set stays"
    );
    maps.delete("a", &DeleteParams::default()).await.unwrap();
    maps.create(&PostParams::default(), &config_map("c", "2")).await.unwrap();
    fake.compact();
    fake.clear_requests();
    fake.clear_faults();

    // Only a new list can show that `a` went.
    holds(&mut rx, &["b=1", "c=2"]).await;
    assert!(rx.borrow().error.is_none());
    let requests = fake.requests();
    let expired = requests.iter().position(|r| r.watch && r.status == 200).expect("a re-watch");
    let relist = requests.iter().position(|r| !r.watch && r.method == "GET" && r.path.ends_with("/configmaps"));
    assert!(relist.is_some_and(|l| l > expired), "a list follows the expired watch: {requests:?}");
}

#[tokio::test]
async fn an_unreachable_api_server_keeps_the_last_state_and_a_restart_catches_up() {
    let fake = FakeApiServer::start().unwrap();
    let client = client(&fake);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default());
    wait_ready(&mut rx).await.unwrap();

    fake.stop();
    until(&mut rx, "the failure to show", |set| set.error.is_some()).await;
    assert_eq!(contents(&rx.borrow()), BTreeSet::from(["a=1".to_string()]));
    // Changes while it is down (the state outlives the listener) arrive after the restart.
    fake.put(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}, "data": {"v": "2"}}))
        .unwrap();
    fake.put(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "default"}, "data": {"v": "1"}}))
        .unwrap();
    fake.restart().unwrap();
    holds(&mut rx, &["a=2", "b=1"]).await;
    assert!(rx.borrow().error.is_none());
}

#[tokio::test]
async fn a_failure_clears_when_the_watch_opens_again_even_if_nothing_changed() {
    let fake = FakeApiServer::start().unwrap();
    let client = client(&fake);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default());
    wait_ready(&mut rx).await.unwrap();

    fake.fail_next_matching(2, 500, RequestFilter::watches());
    fake.close_watches();
    until(&mut rx, "the failure to show", |set| set.error.is_some()).await;
    assert!(rx.borrow().failures >= 1);
    // No object changes: only the watch opening again can clear the failure.
    until(&mut rx, "the failure to clear", |set| set.error.is_none()).await;
    assert_eq!(contents(&rx.borrow()), BTreeSet::from(["a=1".to_string()]));
    assert!(fake.open_watches(&RequestFilter::watches()) >= 1);
}

#[tokio::test]
async fn streaming_lists_work_and_the_watch_ends_with_its_receivers() {
    let fake = FakeApiServer::shared();
    let client = client(fake);
    let ns = namespace(&client, "set-streaming").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &config_map("a", "1")).await.unwrap();
    let mut rx = watch_objects(maps.clone(), watcher::Config::default().streaming_lists());
    let first = wait_ready(&mut rx).await.unwrap();
    assert_eq!(contents(&first), BTreeSet::from(["a=1".to_string()]));
    maps.create(&PostParams::default(), &config_map("b", "1")).await.unwrap();
    holds(&mut rx, &["a=1", "b=1"]).await;

    let filter = RequestFilter::watches().in_namespace(&ns);
    assert_eq!(fake.open_watches(&filter), 1);
    drop(rx);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while fake.open_watches(&filter) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the watch outlived its receivers");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
