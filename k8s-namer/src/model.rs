//! What the namers keep of Services, EndpointSlices and Pods, and how a service port's
//! address set follows from them. Pure: the watching is elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};
use waymark_dtab::Address;

use crate::names::PortRef;
use crate::{
    APP_PROTOCOL_KEY, CONTROL_PLANE_NS_LABEL, IDENTITY_KEY, NODE_NAME_KEY, POD_KEY, SERVICE_ACCOUNT_KEY, ZONE_KEY,
};

/// The parts of a Service the namers use.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ServiceInfo {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ports: Vec<ServicePortInfo>,
    /// The pod selector, when the Service has one.
    pub(crate) selector: Option<BTreeMap<String, String>>,
    pub(crate) load_balancer: Vec<LoadBalancerIngress>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServicePortInfo {
    /// The port's name ("" for the single unnamed port).
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) target: TargetPort,
    pub(crate) tcp: bool,
    pub(crate) app_protocol: Option<String>,
}

/// Where a Service port sends traffic on its pods.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TargetPort {
    Number(u16),
    /// A container port name: its number may differ from pod to pod, and EndpointSlices
    /// carry it.
    Name(String),
}

/// One entry of a Service's `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LoadBalancerIngress {
    Ip(IpAddr),
    Hostname(String),
}

/// The parts of an EndpointSlice the namer uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SliceInfo {
    pub(crate) ports: Vec<SlicePort>,
    pub(crate) endpoints: Vec<EndpointInfo>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlicePort {
    /// The Service port's name it stands for.
    pub(crate) name: String,
    /// `None` means every port.
    pub(crate) port: Option<u16>,
    pub(crate) tcp: bool,
    pub(crate) app_protocol: Option<String>,
}

/// One endpoint of an EndpointSlice, with its conditions as given (`None` where unset).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EndpointInfo {
    pub(crate) ip: IpAddr,
    pub(crate) ready: Option<bool>,
    pub(crate) serving: Option<bool>,
    pub(crate) terminating: Option<bool>,
    pub(crate) node_name: Option<String>,
    pub(crate) zone: Option<String>,
    pub(crate) pod: Option<PodRef>,
}

/// The pod an endpoint belongs to (its `targetRef`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PodRef {
    pub(crate) name: String,
    pub(crate) uid: Option<String>,
}

/// What the namer needs of a pod: its service account and whether it is meshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    pub(crate) uid: Option<String>,
    pub(crate) service_account: String,
    /// The control plane's namespace, for a meshed pod (its `waymark.io/control-plane-ns`
    /// label).
    pub(crate) control_plane_ns: Option<String>,
}

/// What is known of an endpoint's pod when its address is computed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PodState<'a> {
    Known(&'a PodInfo),
    /// The pod does not exist (any more): the address goes out without pod details.
    Gone,
    /// Not read yet, or reading it failed: the address waits, so that a meshed pod is never
    /// published as one that is not.
    Unknown,
}

/// How identities are named.
#[derive(Debug, Clone)]
pub(crate) struct IdentityNaming {
    pub(crate) trust_domain: String,
}

impl From<Service> for ServiceInfo {
    fn from(service: Service) -> Self {
        let spec = service.spec.unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = match p.target_port {
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(n).ok()?),
                    Some(IntOrString::String(name)) => match name.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(name),
                    },
                    None => TargetPort::Number(port),
                };
                Some(ServicePortInfo {
                    name: p.name.unwrap_or_default(),
                    port,
                    target,
                    tcp: is_tcp(p.protocol.as_deref()),
                    app_protocol: p.app_protocol,
                })
            })
            .collect();
        let load_balancer = service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ingress| match (ingress.ip, ingress.hostname) {
                (Some(ip), _) if ip.parse::<IpAddr>().is_ok() => ip.parse().ok().map(LoadBalancerIngress::Ip),
                (_, Some(hostname)) if !hostname.is_empty() => Some(LoadBalancerIngress::Hostname(hostname)),
                _ => None,
            })
            .collect();
        ServiceInfo {
            labels: service.metadata.labels.unwrap_or_default(),
            ports,
            selector: spec.selector.filter(|s| !s.is_empty()),
            load_balancer,
        }
    }
}

impl From<EndpointSlice> for SliceInfo {
    fn from(slice: EndpointSlice) -> Self {
        let family = match slice.address_type.as_str() {
            "IPv4" => Some(false),
            "IPv6" => Some(true),
            // FQDN slices are deprecated and carry no IP addresses.
            _ => None,
        };
        let ports = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| SlicePort {
                name: p.name.unwrap_or_default(),
                port: p.port.and_then(|n| u16::try_from(n).ok()),
                tcp: is_tcp(p.protocol.as_deref()),
                app_protocol: p.app_protocol,
            })
            .collect();
        let endpoints = slice
            .endpoints
            .into_iter()
            .filter_map(|e| {
                // Only the first address has a meaning, as for kube-proxy.
                let ip: IpAddr = e.addresses.first()?.parse().ok()?;
                if Some(ip.is_ipv6()) != family {
                    return None;
                }
                let conditions = e.conditions.unwrap_or_default();
                let pod = e
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| Some(PodRef { name: r.name?, uid: r.uid }));
                Some(EndpointInfo {
                    ip,
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                    node_name: e.node_name,
                    zone: e.zone,
                    pod,
                })
            })
            .collect();
        SliceInfo { ports, endpoints }
    }
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> Self {
        let control_plane_ns =
            pod.metadata.labels.as_ref().and_then(|l| l.get(CONTROL_PLANE_NS_LABEL)).filter(|v| !v.is_empty()).cloned();
        PodInfo {
            uid: pod.metadata.uid,
            // The ServiceAccount admission plugin sets `default` when a pod names none.
            service_account: pod
                .spec
                .and_then(|s| s.service_account_name)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            control_plane_ns,
        }
    }
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

impl ServiceInfo {
    /// The TCP port a path names: by name, or by its `port` number.
    pub(crate) fn port(&self, port: &PortRef) -> Option<&ServicePortInfo> {
        self.ports.iter().filter(|p| p.tcp).find(|p| match port {
            PortRef::Name(name) => p.name == *name,
            PortRef::Number(number) => p.port == *number,
        })
    }

    /// The Service's pod selector as label selector text.
    pub(crate) fn selector_text(&self) -> Option<String> {
        let selector = self.selector.as_ref()?;
        Some(selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
    }
}

impl EndpointInfo {
    /// Ready to receive new traffic: `ready`, where unset means ready.
    fn is_ready(&self) -> bool {
        self.ready != Some(false)
    }

    /// Terminating but still serving: used only when no endpoint is ready, so that a service
    /// whose every pod is shutting down keeps serving until they stop, as kube-proxy does.
    /// An unset `serving` defers to `ready`; an unset `terminating` is false.
    fn is_serving_while_terminating(&self) -> bool {
        self.terminating == Some(true) && self.serving.unwrap_or(self.is_ready())
    }
}

/// The addresses of a Service port over its EndpointSlices, sorted and without duplicates
/// (an endpoint may briefly be in two slices). Ready endpoints, or when there are none,
/// terminating endpoints that are still serving. An endpoint whose pod is
/// [`PodState::Unknown`] is left out; the pods left out are returned.
pub(crate) fn addresses<'s>(
    port: &ServicePortInfo,
    slices: impl IntoIterator<Item = &'s SliceInfo>,
    pod_state: impl Fn(&PodRef) -> PodState<'s>,
    naming: &IdentityNaming,
    namespace: &str,
) -> (Vec<Address>, BTreeSet<PodRef>) {
    let mut ready: BTreeMap<SocketAddr, Address> = BTreeMap::new();
    let mut draining: BTreeMap<SocketAddr, Address> = BTreeMap::new();
    let mut waiting = BTreeSet::new();
    for slice in slices {
        let Some((number, app_protocol)) = slice_port(port, slice) else { continue };
        for endpoint in &slice.endpoints {
            let target = if endpoint.is_ready() {
                &mut ready
            } else if endpoint.is_serving_while_terminating() {
                &mut draining
            } else {
                continue;
            };
            let pod = match &endpoint.pod {
                Some(pod_ref) => match pod_state(pod_ref) {
                    PodState::Known(info) => Some((pod_ref, Some(info))),
                    PodState::Gone => Some((pod_ref, None)),
                    PodState::Unknown => {
                        waiting.insert(pod_ref.clone());
                        continue;
                    }
                },
                None => None,
            };
            let addr = SocketAddr::new(endpoint.ip, number);
            target.entry(addr).or_insert_with(|| Address {
                ip: endpoint.ip,
                port: number,
                meta: metadata(endpoint, app_protocol, pod, naming, namespace),
            });
        }
    }
    let chosen = if ready.is_empty() { draining } else { ready };
    (chosen.into_values().collect(), waiting)
}

/// The number and application protocol of `port` in this slice: its entry with the Service
/// port's name, else a numeric target port; `None` when the slice cannot say (a named target
/// port the slice does not carry).
fn slice_port<'a>(port: &'a ServicePortInfo, slice: &'a SliceInfo) -> Option<(u16, Option<&'a str>)> {
    let entry = slice.ports.iter().find(|p| p.tcp && p.name == port.name);
    let app_protocol = entry.and_then(|p| p.app_protocol.as_deref()).or(port.app_protocol.as_deref());
    match (entry.and_then(|p| p.port), &port.target) {
        (Some(number), _) => Some((number, app_protocol)),
        (None, TargetPort::Number(number)) => Some((*number, app_protocol)),
        (None, TargetPort::Name(_)) => None,
    }
}

fn metadata(
    endpoint: &EndpointInfo,
    app_protocol: Option<&str>,
    pod: Option<(&PodRef, Option<&PodInfo>)>,
    naming: &IdentityNaming,
    namespace: &str,
) -> Map<String, Value> {
    let mut meta = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            meta.insert(key.to_string(), Value::String(value.to_string()));
        }
    };
    put(NODE_NAME_KEY, endpoint.node_name.as_deref());
    put(ZONE_KEY, endpoint.zone.as_deref());
    put(APP_PROTOCOL_KEY, app_protocol);
    if let Some((pod_ref, info)) = pod {
        put(POD_KEY, Some(&pod_ref.name));
        if let Some(info) = info {
            put(SERVICE_ACCOUNT_KEY, Some(&info.service_account));
            if let Some(control) = &info.control_plane_ns {
                let identity = format!(
                    "{}.{namespace}.serviceaccount.identity.{control}.{}",
                    info.service_account, naming.trust_domain
                );
                put(IDENTITY_KEY, Some(&identity));
            }
        }
    }
    meta
}

/// A Service's load-balancer addresses at a port: its IPs, and the addresses its host names
/// resolved to (in `resolved`), sorted.
pub(crate) fn load_balancer_addresses(
    service: &ServiceInfo,
    port: &ServicePortInfo,
    resolved: &BTreeMap<String, Vec<IpAddr>>,
) -> Vec<Address> {
    let ips: BTreeSet<IpAddr> = service
        .load_balancer
        .iter()
        .flat_map(|ingress| match ingress {
            LoadBalancerIngress::Ip(ip) => vec![*ip],
            LoadBalancerIngress::Hostname(host) => resolved.get(host).cloned().unwrap_or_default(),
        })
        .collect();
    ips.into_iter().map(|ip| Address::from(SocketAddr::new(ip, port.port))).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(value: Value) -> ServiceInfo {
        serde_json::from_value::<Service>(value).unwrap().into()
    }

    fn slice(value: Value) -> SliceInfo {
        serde_json::from_value::<EndpointSlice>(value).unwrap().into()
    }

    fn naming() -> IdentityNaming {
        IdentityNaming { trust_domain: "cluster.local".into() }
    }

    fn shown(addresses: &[Address]) -> Vec<String> {
        addresses.iter().map(|a| a.socket_addr().to_string()).collect()
    }

    fn web() -> ServiceInfo {
        service(json!({"metadata": {"name": "web", "labels": {"version": "v1"}}, "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"},
                {"name": "admin", "port": 9990, "targetPort": 9991},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]
        }}))
    }

    fn endpoint(ip: &str, conditions: Value) -> Value {
        json!({"addresses": [ip], "conditions": conditions, "nodeName": "node-1", "zone": "z1",
               "targetRef": {"kind": "Pod", "name": format!("web-{ip}"), "uid": format!("uid-{ip}")}})
    }

    #[test]
    fn ports_are_found_by_name_or_number_and_only_tcp() {
        let web = web();
        assert_eq!(web.port(&PortRef::Name("http".into())).map(|p| p.port), Some(80));
        assert_eq!(web.port(&PortRef::Number(9990)).map(|p| p.name.as_str()), Some("admin"));
        assert!(web.port(&PortRef::Name("dns".into())).is_none());
        assert!(web.port(&PortRef::Number(8080)).is_none());
        assert_eq!(web.selector_text().as_deref(), Some("app=web"));
    }

    #[test]
    fn slices_merge_and_conditions_decide_as_kubernetes_documents() {
        let web = web();
        let http = web.port(&PortRef::Name("http".into())).unwrap();
        let a = slice(json!({"metadata": {"name": "web-a"}, "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "appProtocol": "kubernetes.io/h2c"}],
        "endpoints": [
            endpoint("10.0.0.1", json!({"ready": true})),
            endpoint("10.0.0.2", json!({})),
            endpoint("10.0.0.3", json!({"ready": false})),
            endpoint("10.0.0.4", json!({"ready": false, "serving": true, "terminating": true}))
        ]}));
        let b = slice(json!({"metadata": {"name": "web-b"}, "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8081}],
            "endpoints": [endpoint("fd00::1", json!({"ready": true})), endpoint("10.0.0.9", json!({"ready": true}))]}));
        // The same endpoint in two slices, as during an update, counts once.
        let c = slice(json!({"metadata": {"name": "web-c"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}], "endpoints": [endpoint("10.0.0.1", json!({"ready": true}))]}));
        let (addresses, waiting) = addresses(http, [&a, &b, &c], |_| PodState::Gone, &naming(), "default");
        assert_eq!(shown(&addresses), ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8081"]);
        assert!(waiting.is_empty());
        assert_eq!(addresses[0].meta["appProtocol"], "kubernetes.io/h2c");
        assert_eq!(addresses[2].meta["appProtocol"], "http", "the Service port's, when the slice has none");
        assert_eq!(addresses[0].meta["nodeName"], "node-1");
        assert_eq!(addresses[0].meta["zone"], "z1");
        assert_eq!(addresses[0].meta["pod"], "web-10.0.0.1");
        assert!(!addresses[0].meta.contains_key("serviceAccount"), "the pod is gone");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let web = web();
        let http = web.port(&PortRef::Name("http".into())).unwrap();
        let draining = slice(json!({"metadata": {"name": "web-a"}, "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            endpoint("10.0.0.4", json!({"ready": false, "serving": true, "terminating": true})),
            endpoint("10.0.0.5", json!({"ready": false, "serving": false, "terminating": true})),
            endpoint("10.0.0.6", json!({"ready": false}))
        ]}));
        let (addresses, _) = addresses(http, [&draining], |_| PodState::Gone, &naming(), "default");
        assert_eq!(shown(&addresses), ["10.0.0.4:8080"]);
    }

    #[test]
    fn numeric_targets_serve_slices_without_the_port_and_named_ones_do_not() {
        let web = web();
        let bare = slice(json!({"metadata": {"name": "manual"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"]}]}));
        let admin = web.port(&PortRef::Name("admin".into())).unwrap();
        let (found, _) = addresses(admin, [&bare], |_| PodState::Gone, &naming(), "default");
        assert_eq!(shown(&found), ["10.1.0.1:9991"]);
        let http = web.port(&PortRef::Name("http".into())).unwrap();
        assert!(addresses(http, [&bare], |_| PodState::Gone, &naming(), "default").0.is_empty());
    }

    #[test]
    fn pods_give_service_accounts_and_meshed_pods_identities() {
        let web = web();
        let http = web.port(&PortRef::Name("http".into())).unwrap();
        let s = slice(json!({"metadata": {"name": "web-a"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [endpoint("10.0.0.1", json!({})), endpoint("10.0.0.2", json!({})), endpoint("10.0.0.3", json!({}))]}));
        let meshed: PodInfo = serde_json::from_value::<Pod>(json!({
            "metadata": {"name": "web-10.0.0.1", "uid": "uid-10.0.0.1", "labels": {"waymark.io/control-plane-ns": "waymark"}},
            "spec": {"serviceAccountName": "web", "containers": []}
        }))
        .unwrap()
        .into();
        let plain: PodInfo =
            serde_json::from_value::<Pod>(json!({"metadata": {"name": "web-10.0.0.2"}, "spec": {"containers": []}}))
                .unwrap()
                .into();
        let state = |pod: &PodRef| match pod.name.as_str() {
            "web-10.0.0.1" => PodState::Known(&meshed),
            "web-10.0.0.2" => PodState::Known(&plain),
            _ => PodState::Unknown,
        };
        let (found, waiting) = addresses(http, [&s], state, &naming(), "prod");
        assert_eq!(shown(&found), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(found[0].meta["serviceAccount"], "web");
        assert_eq!(found[0].meta["identity"], "web.prod.serviceaccount.identity.waymark.cluster.local");
        assert_eq!(found[1].meta["serviceAccount"], "default");
        assert!(!found[1].meta.contains_key("identity"));
        assert_eq!(waiting.into_iter().map(|p| p.name).collect::<Vec<_>>(), ["web-10.0.0.3"]);
    }

    #[test]
    fn load_balancer_addresses_use_the_service_port() {
        let lb = service(
            json!({"metadata": {"name": "edge"}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}}}),
        );
        let https = lb.port(&PortRef::Name("https".into())).unwrap();
        let resolved = [("lb.example.com".to_string(), vec!["198.51.100.1".parse().unwrap()])].into();
        assert_eq!(shown(&load_balancer_addresses(&lb, https, &resolved)), ["198.51.100.1:443", "203.0.113.7:443"]);
    }
}
