//! The request conventions of namerd's mesh interface, for servers, and request builders, for
//! clients.
//!
//! Every request names a dtab namespace through its `root`: a path of exactly one UTF-8 element
//! (`/default`). namerd checks requests in a fixed order and answers with fixed statuses and
//! messages, which Linkerd shows to operators; [`BindRequest`], [`DelegateTreeRequest`],
//! [`namespace`] and [`replicas_id`] reproduce them. Resolver ids may carry a transformer
//! prefix, which [`strip_transformer_prefix`] removes before the id is resolved.

use tonic::Status;
use waymark_dtab::{Dtab, NameTree, Path};

use crate::convert::ConvertError;
use crate::mesh;

/// The message of the `INVALID_ARGUMENT` status for a request without a root.
pub const NO_NAMESPACE: &str = "No namespace specified";

/// The message of the `NOT_FOUND` status for a request without a name (sic: not
/// `INVALID_ARGUMENT`).
pub const NO_NAME: &str = "No name given";

/// The message of the `NOT_FOUND` status `GetDtab` and `StreamDtab` answer for a namespace that
/// does not exist.
pub const ROOT_NOT_FOUND: &str = "Root not found";

/// The message of the failed replica set the resolver answers (as a normal response, not a
/// status) for a request without an id.
pub const NO_ID: &str = "No ID provided";

/// Request metadata with which a client asks `GetBoundTree` and `StreamBoundTree` to keep
/// every usable alternative in the bound tree (value [`KEEP_ALTERNATIVES`]) instead of
/// Finagle's first non-negative one, so that it can fall through, per request, to the next
/// alternative when one has no endpoints. Waymark routers send it; Linkerd 1 routers do not,
/// and get Finagle's trees.
pub const ALTERNATIVES_METADATA: &str = "waymark-alternatives";

/// The value of [`ALTERNATIVES_METADATA`] that keeps alternatives.
pub const KEEP_ALTERNATIVES: &str = "keep";

/// A checked `BindReq`: bind `name` through the namespace's stored dtab followed by `dtab`.
#[derive(Debug, Clone, PartialEq)]
pub struct BindRequest {
    /// The dtab namespace.
    pub namespace: String,
    /// The name to bind; never empty.
    pub name: Path,
    /// The request's extra dentries, which go after the stored dtab.
    pub dtab: Dtab,
}

/// A checked `DelegateTreeReq`: delegate `tree` through the namespace's stored dtab followed by
/// `dtab`.
#[derive(Debug, Clone, PartialEq)]
pub struct DelegateTreeRequest {
    /// The dtab namespace.
    pub namespace: String,
    /// The name tree to delegate.
    pub tree: NameTree<Path>,
    /// The request's extra dentries, which go after the stored dtab.
    pub dtab: Dtab,
}

/// The namespace a request's `root` names: `INVALID_ARGUMENT` "No namespace specified" when it
/// is absent, and `` INVALID_ARGUMENT "Invalid root: `<path>` must have exactly one segment" ``
/// unless it is exactly one UTF-8 element.
pub fn namespace(root: Option<&mesh::Path>) -> Result<String, Status> {
    let root = root.ok_or_else(|| Status::invalid_argument(NO_NAMESPACE))?;
    let path = Path::try_from(root).map_err(|e| Status::invalid_argument(format!("Invalid root: {e}")))?;
    match path.labels() {
        [label] if label.as_str().is_some() => Ok(label.as_str().unwrap_or_default().to_string()),
        _ => Err(Status::invalid_argument(format!("Invalid root: `{path}` must have exactly one segment"))),
    }
}

/// The name a request binds: `NOT_FOUND` "No name given" when it is absent or empty, and
/// `INVALID_ARGUMENT` when a label is empty.
pub fn name(name: Option<&mesh::Path>) -> Result<Path, Status> {
    match name {
        None => Err(no_name()),
        Some(name) if name.elems.is_empty() => Err(no_name()),
        Some(name) => Path::try_from(name).map_err(|e| invalid("name", e)),
    }
}

/// The status for a namespace that does not exist, where one must (`GetDtab`, `StreamDtab`):
/// `NOT_FOUND` "Root not found".
pub fn root_not_found() -> Status {
    Status::not_found(ROOT_NOT_FOUND)
}

/// The resolver's answer to a request without an id: a failed replica set, not an error status.
pub fn no_id() -> mesh::Replicas {
    mesh::Replicas { result: Some(mesh::replicas::Result::Failed(mesh::replicas::Failed { message: NO_ID.into() })) }
}

/// The id a `ReplicasReq` asks about, still with any transformer prefix (see
/// [`strip_transformer_prefix`]). When there is no usable id, the error is the response to send:
/// [`no_id`] for an absent or empty id, a failed replica set for a malformed one.
pub fn replicas_id(req: &mesh::ReplicasReq) -> Result<Path, mesh::Replicas> {
    match &req.id {
        Some(id) if !id.elems.is_empty() => Path::try_from(id).map_err(|e| {
            let message = format!("Invalid id: {e}");
            mesh::Replicas { result: Some(mesh::replicas::Result::Failed(mesh::replicas::Failed { message })) }
        }),
        _ => Err(no_id()),
    }
}

pub use waymark_dtab::global::strip_transformer_prefix;

/// A root path naming `namespace`, as clients send it. An empty namespace gives a root the
/// server rejects.
fn root(namespace: &str) -> mesh::Path {
    mesh::Path { elems: vec![namespace.as_bytes().to_vec()] }
}

/// A `DtabReq` for the dtab of `namespace`.
pub fn dtab_req(namespace: &str) -> mesh::DtabReq {
    mesh::DtabReq { root: Some(root(namespace)) }
}

/// A `ReplicasReq` for the replicas of the bound id `id`.
pub fn replicas_req(id: &Path) -> mesh::ReplicasReq {
    mesh::ReplicasReq { id: Some(id.into()) }
}

fn no_name() -> Status {
    Status::not_found(NO_NAME)
}

/// `INVALID_ARGUMENT` for a malformed part of a request.
fn invalid(what: &str, e: ConvertError) -> Status {
    Status::invalid_argument(format!("Invalid {what}: {e}"))
}

/// The request's extra dtab; an absent one is empty.
fn extra_dtab(dtab: Option<&mesh::Dtab>) -> Result<Dtab, Status> {
    dtab.map_or(Ok(Dtab::empty()), |d| Dtab::try_from(d).map_err(|e| invalid("dtab", e)))
}

impl TryFrom<&mesh::BindReq> for BindRequest {
    type Error = Status;

    /// Checks in namerd's order: a missing root, then a missing name, then an invalid root,
    /// then malformed parts.
    fn try_from(req: &mesh::BindReq) -> Result<Self, Self::Error> {
        if req.root.is_none() {
            return Err(Status::invalid_argument(NO_NAMESPACE));
        }
        if req.name.as_ref().is_none_or(|n| n.elems.is_empty()) {
            return Err(no_name());
        }
        let namespace = namespace(req.root.as_ref())?;
        let name = name(req.name.as_ref())?;
        let dtab = extra_dtab(req.dtab.as_ref())?;
        Ok(BindRequest { namespace, name, dtab })
    }
}

impl From<&BindRequest> for mesh::BindReq {
    fn from(req: &BindRequest) -> Self {
        mesh::BindReq {
            root: Some(root(&req.namespace)),
            name: Some((&req.name).into()),
            dtab: Some((&req.dtab).into()),
        }
    }
}

impl TryFrom<&mesh::DelegateTreeReq> for DelegateTreeRequest {
    type Error = Status;

    /// Checks in namerd's order: a missing root, then a missing tree ("No name given"), then an
    /// invalid root, then malformed parts.
    fn try_from(req: &mesh::DelegateTreeReq) -> Result<Self, Self::Error> {
        if req.root.is_none() {
            return Err(Status::invalid_argument(NO_NAMESPACE));
        }
        let Some(tree) = &req.tree else { return Err(no_name()) };
        let namespace = namespace(req.root.as_ref())?;
        let tree = NameTree::try_from(tree).map_err(|e| invalid("tree", e))?;
        let dtab = extra_dtab(req.dtab.as_ref())?;
        Ok(DelegateTreeRequest { namespace, tree, dtab })
    }
}

impl From<&DelegateTreeRequest> for mesh::DelegateTreeReq {
    fn from(req: &DelegateTreeRequest) -> Self {
        mesh::DelegateTreeReq {
            root: Some(root(&req.namespace)),
            tree: Some((&req.tree).into()),
            dtab: Some((&req.dtab).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    fn mp(s: &str) -> mesh::Path {
        (&p(s)).into()
    }

    fn status<T: std::fmt::Debug>(r: Result<T, Status>) -> (Code, String) {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    }

    #[test]
    fn roots_must_be_exactly_one_utf8_element() {
        assert_eq!(namespace(Some(&mp("/default"))).unwrap(), "default");
        assert_eq!(status(namespace(None)), (Code::InvalidArgument, "No namespace specified".into()));
        assert_eq!(
            status(namespace(Some(&mp("/a/b")))),
            (Code::InvalidArgument, "Invalid root: `/a/b` must have exactly one segment".into())
        );
        assert_eq!(
            status(namespace(Some(&mp("/")))),
            (Code::InvalidArgument, "Invalid root: `/` must have exactly one segment".into())
        );
        let not_utf8 = mesh::Path { elems: vec![vec![0xff]] };
        assert_eq!(
            status(namespace(Some(&not_utf8))),
            (Code::InvalidArgument, r"Invalid root: `/\xff` must have exactly one segment".into())
        );
        let empty_label = mesh::Path { elems: vec![Vec::new()] };
        assert_eq!(status(namespace(Some(&empty_label))).0, Code::InvalidArgument);
    }

    #[test]
    fn bind_requests_are_checked_in_namerds_order() {
        let req = |root: Option<&str>, name: Option<&str>| mesh::BindReq {
            root: root.map(mp),
            name: name.map(mp),
            dtab: None,
        };
        assert_eq!(status(BindRequest::try_from(&req(None, None))), (Code::InvalidArgument, NO_NAMESPACE.into()));
        assert_eq!(status(BindRequest::try_from(&req(Some("/a/b"), None))), (Code::NotFound, NO_NAME.into()));
        assert_eq!(status(BindRequest::try_from(&req(Some("/a/b"), Some("/")))), (Code::NotFound, NO_NAME.into()));
        assert_eq!(status(BindRequest::try_from(&req(Some("/a/b"), Some("/svc")))).0, Code::InvalidArgument);

        let checked = BindRequest::try_from(&req(Some("/default"), Some("/svc/web"))).unwrap();
        assert_eq!(checked, BindRequest { namespace: "default".into(), name: p("/svc/web"), dtab: Dtab::empty() });

        let full = BindRequest { namespace: "ns".into(), name: p("/svc/x"), dtab: "/svc=>/$/inet/1".parse().unwrap() };
        assert_eq!(BindRequest::try_from(&mesh::BindReq::from(&full)).unwrap(), full);

        let mut bad_dtab = mesh::BindReq::from(&full);
        bad_dtab.dtab.as_mut().unwrap().dentries[0].dst = None;
        assert_eq!(
            status(BindRequest::try_from(&bad_dtab)),
            (Code::InvalidArgument, "Invalid dtab: Dtab.Dentry.dst is missing".into())
        );
    }

    #[test]
    fn delegate_requests_need_a_tree() {
        let full = DelegateTreeRequest {
            namespace: "ns".into(),
            tree: "/svc/a | /svc/b".parse().unwrap(),
            dtab: "/svc=>/#/io.l5d.fs".parse().unwrap(),
        };
        let message = mesh::DelegateTreeReq::from(&full);
        assert_eq!(DelegateTreeRequest::try_from(&message).unwrap(), full);
        let mut no_tree = message.clone();
        no_tree.tree = None;
        no_tree.root = Some(mp("/a/b"));
        assert_eq!(status(DelegateTreeRequest::try_from(&no_tree)), (Code::NotFound, NO_NAME.into()));
        let mut no_root = message;
        no_root.root = None;
        assert_eq!(status(DelegateTreeRequest::try_from(&no_root)), (Code::InvalidArgument, NO_NAMESPACE.into()));
    }

    #[test]
    fn replica_requests_without_an_id_get_a_failed_answer() {
        assert_eq!(replicas_id(&replicas_req(&p("/#/io.l5d.fs/web"))).unwrap(), p("/#/io.l5d.fs/web"));
        assert_eq!(replicas_id(&mesh::ReplicasReq { id: None }), Err(no_id()));
        assert_eq!(replicas_id(&replicas_req(&Path::empty())), Err(no_id()));
        let Err(failed) = replicas_id(&mesh::ReplicasReq { id: Some(mesh::Path { elems: vec![Vec::new()] }) }) else {
            panic!("an empty label is not an id")
        };
        assert!(matches!(failed.result, Some(mesh::replicas::Result::Failed(_))));
        assert_eq!(
            no_id().result,
            Some(mesh::replicas::Result::Failed(mesh::replicas::Failed { message: "No ID provided".into() }))
        );
    }

    #[test]
    fn transformer_prefixes_are_stripped_up_to_the_first_namer_element() {
        let strip = |s: &str| strip_transformer_prefix(&p(s)).to_string();
        assert_eq!(
            strip("/%/io.l5d.k8s.daemonset/linkerd/http-incoming/l5d/#/io.l5d.k8s/default/http/web"),
            "/#/io.l5d.k8s/default/http/web"
        );
        assert_eq!(strip("/%/io.l5d.port/4141/$/inet/127.0.0.1/80"), "/$/inet/127.0.0.1/80");
        assert_eq!(strip("/%/io.l5d.localhost/%/io.l5d.port/1/#/a"), "/#/a");
        assert_eq!(strip("/%/no/namer"), "/");
        assert_eq!(strip("/#/io.l5d.fs/%/x"), "/#/io.l5d.fs/%/x");
        assert_eq!(strip("/x/%/#/y"), "/x/%/#/y");
        assert_eq!(strip("/"), "/");
    }

    #[test]
    fn client_requests_name_the_namespace_as_a_one_element_root() {
        assert_eq!(dtab_req("default").root, Some(mp("/default")));
        assert_eq!(namespace(dtab_req("default").root.as_ref()).unwrap(), "default");
        assert_eq!(root_not_found().code(), Code::NotFound);
        assert_eq!(root_not_found().message(), "Root not found");
    }
}
