//! The fake API server's semantics, as the `kube` client sees them.

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Discovery;
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use waymark_test_support::kube::{AccessRule, FakeApiServer, RequestFilter, TokenUser};

use super::{DEADLINE, api_error, client, eventually, namespace};

fn config_map(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).expect("a ConfigMap")
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect()
}

#[tokio::test]
async fn objects_get_a_uid_a_creation_time_and_one_global_resource_version() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "crud").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let a = maps.create(&PostParams::default(), &config_map("a", json!({}), json!({"k": "1"}))).await.unwrap();
    let b = maps.create(&PostParams::default(), &config_map("b", json!({}), json!({}))).await.unwrap();
    let uid = a.uid().unwrap();
    assert_eq!(uid.len(), 36);
    assert_ne!(a.uid(), b.uid());
    assert!(a.metadata.creation_timestamp.is_some());
    let rv = |o: &ConfigMap| o.resource_version().unwrap().parse::<u64>().unwrap();
    assert!(rv(&b) > rv(&a), "one counter for every object");

    let mut changed = a.clone();
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = maps.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert!(rv(&replaced) > rv(&b));
    assert_eq!(replaced.uid(), a.uid());

    // A stale resourceVersion is a conflict, worded as the API server words it.
    let conflict = api_error(maps.replace("a", &PostParams::default(), &changed).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let exists = api_error(maps.create(&PostParams::default(), &config_map("a", json!({}), json!({}))).await);
    assert_eq!(
        (exists.code, exists.reason.as_str(), exists.message.as_str()),
        (409, "AlreadyExists", "configmaps \"a\" already exists")
    );

    let deleted = maps.delete("a", &DeleteParams::default()).await.unwrap();
    let status = deleted.right().expect("a configmap's deletion answers with a Status");
    assert_eq!(status.details.unwrap().uid, uid);
    let missing = api_error(maps.get("a").await);
    assert_eq!(
        (missing.code, missing.reason.as_str(), missing.message.as_str()),
        (404, "NotFound", "configmaps \"a\" not found")
    );
    let details = missing.details.unwrap();
    assert_eq!((details.name.as_str(), details.kind.as_str()), ("a", "configmaps"));

    // Creating in a namespace that does not exist is a 404 for the namespace.
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "no-such-namespace");
    let error = api_error(nowhere.create(&PostParams::default(), &config_map("x", json!({}), json!({}))).await);
    assert_eq!((error.code, error.message.as_str()), (404, "namespaces \"no-such-namespace\" not found"));
}

#[tokio::test]
async fn generation_counts_spec_changes_and_invalid_objects_are_refused() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "generation").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    }))
    .unwrap();
    let created = deployments.create(&PostParams::default(), &deployment).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let labelled = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1), "metadata changes keep the generation");
    let scaled = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));

    let mut bad = deployment.clone();
    bad.metadata.name = Some("Web_1".into());
    let invalid = api_error(deployments.create(&PostParams::default(), &bad).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.starts_with("Deployment.apps \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain"),
        "{}",
        invalid.message
    );
    let cause = &invalid.details.unwrap().causes[0];
    assert_eq!((cause.reason.as_str(), cause.field.as_str()), ("FieldValueInvalid", "metadata.name"));
}

#[tokio::test]
async fn pages_come_from_one_snapshot() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "pages").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b", "c", "d", "e"] {
        maps.create(&PostParams::default(), &config_map(name, json!({}), json!({}))).await.unwrap();
    }
    let first = maps.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");

    // Changes after the first page do not show in the later ones.
    maps.delete("d", &DeleteParams::default()).await.unwrap();
    maps.create(&PostParams::default(), &config_map("bb", json!({}), json!({}))).await.unwrap();
    let second = maps.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second.items), ["c", "d"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let third = maps
        .list(&ListParams::default().limit(2).continue_token(second.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(names(&third.items), ["e"]);
    assert!(third.metadata.continue_.is_none());

    // A fresh list sees them.
    assert_eq!(names(&maps.list(&ListParams::default()).await.unwrap().items), ["a", "b", "bb", "c", "e"]);
    // A continue token may not come with a resourceVersion.
    let uri = format!("/api/v1/namespaces/{ns}/configmaps?limit=2&continue={token}&resourceVersion=5");
    let error = raw_error(&client, &uri).await;
    assert_eq!(
        (error.code, error.message.as_str()),
        (400, "specifying resource version is not allowed when using continue")
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "selectors").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for (name, labels) in [
        ("one", json!({"app": "web", "tier": "front", "rank": "1"})),
        ("two", json!({"app": "web", "tier": "back", "rank": "2"})),
        ("three", json!({"app": "api", "rank": "3"})),
    ] {
        maps.create(&PostParams::default(), &config_map(name, labels, json!({}))).await.unwrap();
    }
    let select = |selector: &'static str| {
        let maps = maps.clone();
        async move {
            let mut found = names(&maps.list(&ListParams::default().labels(selector)).await.unwrap().items);
            found.sort();
            found
        }
    };
    assert_eq!(select("app=web").await, ["one", "two"]);
    assert_eq!(select("app==web,tier!=front").await, ["two"]);
    assert_eq!(select("tier in (front,back)").await, ["one", "two"]);
    assert_eq!(select("tier notin (front)").await, ["three", "two"]);
    assert_eq!(select("tier").await, ["one", "two"]);
    assert_eq!(select("!tier").await, ["three"]);
    assert_eq!(select("rank>1").await, ["three", "two"]);
    assert_eq!(select("rank<2").await, ["one"]);
    let bad = api_error(maps.list(&ListParams::default().labels("app in ()")).await);
    assert_eq!(bad.code, 400);

    let by_name = maps.list(&ListParams::default().fields("metadata.name=two")).await.unwrap();
    assert_eq!(names(&by_name.items), ["two"]);
    let unsupported = api_error(maps.list(&ListParams::default().fields("data.x=1")).await);
    assert_eq!((unsupported.code, unsupported.message.as_str()), (400, "field label not supported: data.x"));

    // Per-kind fields: pods by node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, node) in [("p1", "node-a"), ("p2", "node-b")] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let on_a = pods.list(&ListParams::default().fields("spec.nodeName=node-a")).await.unwrap();
    assert_eq!(names(&on_a.items), ["p1"]);
    let not_a = pods.list(&ListParams::default().fields("spec.nodeName!=node-a,status.phase=Pending")).await.unwrap();
    assert_eq!(names(&not_a.items), ["p2"]);
}

#[tokio::test]
async fn watches_replay_from_a_resource_version_and_follow_selectors() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "watch-replay").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &config_map("before", json!({"w": "y"}), json!({}))).await.unwrap();
    let list = maps.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    // Changes made before the watch starts are replayed from `rv`.
    maps.create(&PostParams::default(), &config_map("x", json!({"w": "y"}), json!({}))).await.unwrap();
    maps.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    maps.patch("x", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"w": "n"}}}))).await.unwrap();
    maps.delete("before", &DeleteParams::default()).await.unwrap();

    let mut events = maps.watch(&WatchParams::default().labels("w=y").timeout(60), &rv).await.unwrap().boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(DEADLINE, events.try_next()).await.expect("events arrive").unwrap().unwrap();
        seen.push(match event {
            WatchEvent::Added(o) => format!("ADDED {}", o.name_any()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.name_any()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.name_any()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    // The relabelled object leaves the selection as a deletion.
    assert_eq!(seen, ["ADDED x", "MODIFIED x", "DELETED x", "DELETED before"]);
}

#[tokio::test]
async fn every_patch_type_and_server_side_apply_conflicts() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "patches").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1"}, {"name": "log", "image": "busybox"}]}}}
    });
    let applied =
        deployments.patch("web", &PatchParams::apply("deployer"), &Patch::Apply(manifest.clone())).await.unwrap();
    assert_eq!(applied.metadata.generation, Some(1));

    // Strategic merge: containers merge by name.
    let strategic = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
    let merged = deployments.patch("web", &PatchParams::default(), &Patch::Strategic(strategic)).await.unwrap();
    let images: Vec<_> =
        merged.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.image.unwrap()).collect();
    assert_eq!(images, ["nginx:2", "busybox"]);

    // JSON patch, with a failing test operation as a precondition.
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/spec/replicas", "value": 2}])).unwrap();
    let patched = deployments.patch("web", &PatchParams::default(), &Patch::<()>::Json(json_patch)).await.unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(2));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 7}])).unwrap();
    let error = api_error(deployments.patch("web", &PatchParams::default(), &Patch::<()>::Json(failing)).await);
    assert_eq!(error.code, 422);

    // A stale resourceVersion inside a merge patch is a precondition too.
    let stale = json!({"metadata": {"resourceVersion": applied.resource_version()}, "spec": {"paused": true}});
    assert_eq!(api_error(deployments.patch("web", &PatchParams::default(), &Patch::Merge(stale)).await).code, 409);

    // Another manager changing a field the deployer owns conflicts unless forced.
    let mut other = manifest.clone();
    other["spec"] = json!({"replicas": 5});
    let conflict =
        api_error(deployments.patch("web", &PatchParams::apply("scaler"), &Patch::Apply(other.clone())).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(conflict.message.starts_with("Apply failed with 1 conflict: conflict with "), "{}", conflict.message);
    let forced = deployments.patch("web", &PatchParams::apply("scaler").force(), &Patch::Apply(other)).await.unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(5));
    let managers: Vec<_> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert!(
        managers.contains(&("deployer".into(), "Apply".into()))
            && managers.contains(&("scaler".into(), "Apply".into()))
    );

    // The deployer dropping a container from its configuration removes it.
    let mut fewer = manifest.clone();
    fewer["spec"]["template"]["spec"]["containers"] = json!([{"name": "web", "image": "nginx:2"}]);
    fewer["spec"].as_object_mut().unwrap().remove("replicas");
    let after = deployments.patch("web", &PatchParams::apply("deployer"), &Patch::Apply(fewer)).await.unwrap();
    let containers: Vec<_> =
        after.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.name).collect();
    assert_eq!(containers, ["web"]);

    // Apply without a field manager is refused.
    let no_manager = api_error(deployments.patch("web", &PatchParams::default(), &Patch::Apply(manifest)).await);
    assert_eq!(no_manager.code, 422);
    assert!(
        no_manager.message.contains("fieldManager: Required value: is required for apply patch"),
        "{}",
        no_manager.message
    );
}

#[tokio::test]
async fn status_is_a_subresource() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "status").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    }))
    .unwrap();
    let created = ingresses.create(&PostParams::default(), &ingress).await.unwrap();
    assert!(created.status.is_none(), "status given on create is dropped");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}});
    let with_status = ingresses.patch_status("web", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    assert_eq!(
        with_status.status.as_ref().unwrap().load_balancer.as_ref().unwrap().ingress.as_ref().unwrap()[0].ip.as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(with_status.metadata.generation, Some(1));
    // The main resource ignores status.
    let main = ingresses
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": []}}})))
        .await
        .unwrap();
    assert_eq!(main.status, with_status.status);
}

#[tokio::test]
async fn token_and_access_reviews_and_denied_requests() {
    let fake = FakeApiServer::shared();
    let client = client(fake);
    let ns = namespace(&client, "reviews").await;
    fake.register_token("reviews-token", TokenUser::service_account(&ns, "web").with_audiences(&["identity.l5d.io"]));
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str, audiences: Vec<String>| TokenReview {
        spec: TokenReviewSpec { token: Some(token.into()), audiences: Some(audiences) },
        ..TokenReview::default()
    };
    let ok =
        reviews.create(&PostParams::default(), &review("reviews-token", vec!["identity.l5d.io".into()])).await.unwrap();
    let status = ok.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(status.user.unwrap().username.as_deref(), Some(format!("system:serviceaccount:{ns}:web").as_str()));
    let wrong = reviews.create(&PostParams::default(), &review("reviews-token", vec!["other".into()])).await.unwrap();
    assert!(wrong.status.unwrap().error.unwrap().contains("token audiences"));
    let unknown = reviews.create(&PostParams::default(), &review("nope", vec![])).await.unwrap();
    assert_ne!(unknown.status.unwrap().authenticated, Some(true));

    fake.deny(AccessRule::deny("create", "", "secrets").in_namespace(&ns));
    let access: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let ask = |verb: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.clone()),
                verb: Some(verb.into()),
                resource: Some("secrets".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    assert!(!access.create(&PostParams::default(), &ask("create")).await.unwrap().status.unwrap().allowed);
    assert!(access.create(&PostParams::default(), &ask("get")).await.unwrap().status.unwrap().allowed);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let forbidden = api_error(secrets.create(&PostParams::default(), &Default::default()).await);
    assert_eq!((forbidden.code, forbidden.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        forbidden.message,
        format!(
            "secrets is forbidden: User \"kubernetes-admin\" cannot create resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
        )
    );
}

#[tokio::test]
async fn dry_run_persists_nothing_and_delete_preconditions_hold() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "dry-run").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let would = maps.create(&dry, &config_map("ghost", json!({}), json!({"a": "b"}))).await.unwrap();
    assert_eq!(would.data.as_ref().unwrap()["a"], "b");
    assert!(would.uid().is_some());
    assert_eq!(api_error(maps.get("ghost").await).code, 404);

    let real = maps.create(&PostParams::default(), &config_map("real", json!({}), json!({}))).await.unwrap();
    let wrong_uid =
        DeleteParams::default().preconditions(Preconditions { uid: Some("not-it".into()), resource_version: None });
    assert_eq!(api_error(maps.delete("real", &wrong_uid).await).code, 409);
    assert!(maps.delete("real", &DeleteParams::default().dry_run()).await.is_ok());
    assert!(maps.get("real").await.is_ok());
    let right = DeleteParams::default()
        .preconditions(Preconditions { uid: real.uid(), resource_version: real.resource_version() });
    maps.delete("real", &right).await.unwrap();
}

fn widget_crd(group: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wg"]},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                                   "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn custom_resources_exist_while_their_crd_does() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "custom").await;
    let group = "custom.waymark.test";
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let created = crds.create(&PostParams::default(), &widget_crd(group)).await.unwrap();
    let conditions = created.status.unwrap().conditions.unwrap();
    assert!(conditions.iter().any(|c| c.type_ == "Established" && c.status == "True"));

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.group == group)
        .expect("the CRD's group is discovered");
    assert_eq!((resource.plural.as_str(), caps.scope), ("widgets", kube::discovery::Scope::Namespaced));

    let gvk = GroupVersionKind::gvk(group, "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
    let widget: DynamicObject = serde_json::from_value(
        json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "w"},
                                      "spec": {"size": 3, "colour": "red"}, "status": {"ready": true}}),
    )
    .unwrap();
    let stored = widgets.create(&PostParams::default(), &widget).await.unwrap();
    assert_eq!(stored.data["spec"], json!({"size": 3}), "unknown fields are pruned");
    assert!(stored.data.get("status").is_none(), "status is a subresource");
    assert_eq!(stored.metadata.generation, Some(1));
    let strategic =
        api_error(widgets.patch("w", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"size": 4}}))).await);
    assert_eq!(strategic.code, 415, "custom resources take no strategic merge patch");
    let mut unconditional = stored.clone();
    unconditional.metadata.resource_version = None;
    assert_eq!(api_error(widgets.replace("w", &PostParams::default(), &unconditional).await).code, 422);
    let wrong_type =
        api_error(widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": "big"}}))).await);
    assert_eq!(wrong_type.code, 422);

    crds.delete(&format!("widgets.{group}"), &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(widgets.get("w").await).code, 404);
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.groups().all(|g| g.name() != group), "the group leaves discovery with its CRD");
}

/// Sends a raw GET and returns the API error it gets.
async fn raw_error(client: &Client, uri: &str) -> kube::core::Status {
    let request = http::Request::get(uri).body(Vec::new()).unwrap();
    api_error(client.request::<Value>(request).await)
}

#[tokio::test]
async fn list_and_watch_options_are_validated() {
    let client = client(FakeApiServer::shared());
    let base = "/api/v1/namespaces/default/configmaps";
    for (query, message) in [
        (
            "resourceVersionMatch=NotOlderThan",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ),
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ),
        ("sendInitialEvents=true", "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"),
        (
            "watch=1&sendInitialEvents=true",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            "watch=1&resourceVersion=1&resourceVersionMatch=NotOlderThan",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
    ] {
        let error = raw_error(&client, &format!("{base}?{query}")).await;
        assert_eq!((error.code, error.reason.as_str()), (422, "Invalid"), "{query}");
        assert_eq!(error.message, format!("ListOptions.meta.k8s.io \"\" is invalid: {message}"), "{query}");
    }
    assert_eq!(raw_error(&client, "/apis/apps/v1/namespaces/default/nonsense").await.code, 404);
    let request =
        http::Request::get(base).header("Accept", "application/vnd.kubernetes.protobuf").body(Vec::new()).unwrap();
    assert_eq!(api_error(client.request::<Value>(request).await).code, 406);
}

#[tokio::test]
async fn streaming_lists_end_their_initial_events_with_a_bookmark() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "streaming").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        maps.create(&PostParams::default(), &config_map(name, json!({}), json!({}))).await.unwrap();
    }
    let mut events = maps.watch(&WatchParams::streaming_lists().timeout(60), "0").await.unwrap().boxed();
    let mut added = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, events.try_next()).await.unwrap().unwrap().unwrap() {
            WatchEvent::Added(o) => added.push(o.name_any()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, ["a", "b"]);
    maps.create(&PostParams::default(), &config_map("c", json!({}), json!({}))).await.unwrap();
    let next = tokio::time::timeout(DEADLINE, events.try_next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(next, WatchEvent::Added(o) if o.name_any() == "c"));
}

#[tokio::test]
async fn compaction_expires_old_versions_and_continue_tokens() {
    let fake = FakeApiServer::start().unwrap();
    let client = client(&fake);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        maps.create(&PostParams::default(), &config_map(name, json!({}), json!({}))).await.unwrap();
    }
    let page = maps.list(&ListParams::default().limit(1)).await.unwrap();
    let rv = page.metadata.resource_version.clone().unwrap();
    maps.create(&PostParams::default(), &config_map("d", json!({}), json!({}))).await.unwrap();
    fake.compact();

    let mut events = maps.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match tokio::time::timeout(DEADLINE, events.try_next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(status.message.starts_with(&format!("too old resource version: {rv} (")), "{}", status.message);
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    let expired = api_error(
        maps.list(&ListParams::default().limit(1).continue_token(page.metadata.continue_.as_deref().unwrap())).await,
    );
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
    // The 410 carries a token that continues inconsistently, from now.
    let token = expired.metadata.and_then(|m| m.continue_).expect("an inconsistent continue token");
    let rest = maps.list(&ListParams::default().continue_token(&token)).await.unwrap();
    assert_eq!(names(&rest.items), ["b", "c", "d"]);
    // Exact reads of the past are gone too; reads of now still work.
    assert_eq!(api_error(maps.list(&ListParams::default().limit(5).at(&rv)).await).code, 410);
    assert_eq!(
        maps.list(&ListParams::default().limit(5).at(&fake.resource_version().to_string())).await.unwrap().items.len(),
        4
    );
}

#[tokio::test]
async fn restart_keeps_state_and_injected_failures_are_retried_or_returned() {
    let fake = FakeApiServer::start().unwrap();
    let client = client(&fake);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let kept = maps.create(&PostParams::default(), &config_map("kept", json!({}), json!({}))).await.unwrap();
    fake.stop();
    assert!(!matches!(maps.get("kept").await, Ok(_) | Err(kube::Error::Api(_))), "nothing answers while stopped");
    fake.restart().unwrap();
    let again = maps.get("kept").await.unwrap();
    assert_eq!((again.uid(), again.resource_version()), (kept.uid(), kept.resource_version()));

    // kube retries a 503 on its own; a 500 comes back.
    fake.clear_requests();
    fake.fail_next_matching(1, 503, RequestFilter::default().path_contains("/configmaps/kept"));
    maps.get("kept").await.unwrap();
    let statuses: Vec<u16> = fake.requests().iter().filter(|r| r.path.ends_with("/kept")).map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
    fake.fail_next(1, 500);
    assert_eq!(api_error(maps.get("kept").await).code, 500);
    assert!(maps.get("kept").await.is_ok());
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "finalizers").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut map = config_map("held", json!({}), json!({}));
    map.metadata.finalizers = Some(vec!["waymark.test/hold".into()]);
    maps.create(&PostParams::default(), &map).await.unwrap();
    let pending =
        maps.delete("held", &DeleteParams::default()).await.unwrap().left().expect("the object, not a Status");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(maps.get("held").await.is_ok());
    maps.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    eventually("the finalized object to go", || {
        let maps = maps.clone();
        async move { maps.get_opt("held").await.unwrap().is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn watches_get_bookmarks_and_end_at_their_timeout() {
    let fake = FakeApiServer::builder().bookmark_interval(std::time::Duration::from_millis(100)).start().unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client(&fake), "default");
    let rv = maps.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    maps.create(&PostParams::default(), &config_map("x", json!({}), json!({}))).await.unwrap();

    let collect = |params: WatchParams| {
        let maps = maps.clone();
        let rv = rv.clone();
        async move {
            let mut events = maps.watch(&params, &rv).await.unwrap().boxed();
            let (mut added, mut bookmarks) = (Vec::new(), Vec::new());
            // The stream ends on its own at `timeoutSeconds`.
            let ended = tokio::time::timeout(DEADLINE, async {
                while let Some(event) = events.try_next().await.unwrap() {
                    match event {
                        WatchEvent::Added(o) => added.push(o.name_any()),
                        WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
            .await;
            assert!(ended.is_ok(), "the watch ended at its timeout");
            (added, bookmarks)
        }
    };
    let (added, bookmarks) = collect(WatchParams::default().timeout(1)).await;
    assert_eq!(added, ["x"]);
    assert!(!bookmarks.is_empty());
    assert!(bookmarks.iter().all(|b| *b == fake.resource_version().to_string()), "{bookmarks:?}");
    let (added, bookmarks) = collect(WatchParams::default().timeout(1).disable_bookmarks()).await;
    assert_eq!(added, ["x"]);
    assert!(bookmarks.is_empty(), "bookmarks only when asked for");
}

#[tokio::test]
async fn deleting_an_owner_or_a_namespace_deletes_what_depends_on_it() {
    let client = client(FakeApiServer::shared());
    let ns = namespace(&client, "cascade").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = maps.create(&PostParams::default(), &config_map("owner", json!({}), json!({}))).await.unwrap();
    let mut dependent = config_map("dependent", json!({}), json!({}));
    dependent.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.uid().unwrap(),
        ..Default::default()
    }]);
    maps.create(&PostParams::default(), &dependent).await.unwrap();
    maps.create(&PostParams::default(), &config_map("bystander", json!({}), json!({}))).await.unwrap();
    maps.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("the dependent to go with its owner", || {
        let maps = maps.clone();
        async move { maps.get_opt("dependent").await.unwrap().is_none().then_some(()) }
    })
    .await;
    assert!(maps.get_opt("bystander").await.unwrap().is_some());

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let terminating = namespaces.delete(&ns, &DeleteParams::default()).await.unwrap().left().expect("the namespace");
    assert_eq!(terminating.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    eventually("the namespace to go", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { namespaces.get_opt(&ns).await.unwrap().is_none().then_some(()) }
    })
    .await;
    assert!(maps.list(&ListParams::default()).await.unwrap().items.is_empty(), "its contents went with it");
}
