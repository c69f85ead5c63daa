//! Who is asking and what they may do: bearer tokens tests register, TokenReview,
//! SelfSubjectReview, (Self)SubjectAccessReview, and the access rules tests deny.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

/// The audience the fake API server's own tokens are for, as a kind or kubeadm cluster's.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The identity behind a token a test registers.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenUser {
    /// `system:serviceaccount:<ns>:<name>` for a service account.
    pub username: String,
    /// The user's uid.
    pub uid: String,
    /// Groups, e.g. `system:serviceaccounts`.
    pub groups: Vec<String>,
    /// The audiences the token is valid for.
    pub audiences: Vec<String>,
    /// Extra attributes, as TokenReview's `user.extra`.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A rule that denies matching requests (and SubjectAccessReviews); `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: Option<String>,
    /// API group ("" for core).
    pub group: Option<String>,
    /// Plural resource name, optionally with `/subresource`.
    pub resource: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// User name.
    pub user: Option<String>,
}

/// The user a request acts as.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) groups: Vec<String>,
    pub(crate) extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks to do, for authorization.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    pub(crate) verb: &'a str,
    pub(crate) group: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) namespace: Option<&'a str>,
}

/// Tokens and denials.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    tokens: HashMap<String, TokenUser>,
    denials: Vec<AccessRule>,
    /// Whether a request without a known token is refused (401) rather than served as admin.
    pub(crate) require_token: bool,
}

impl TokenUser {
    /// A service account's token identity, for the API server's own audience.
    pub fn service_account(namespace: &str, name: &str) -> TokenUser {
        TokenUser {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: format!("uid-{namespace}-{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            audiences: vec![API_SERVER_AUDIENCE.into()],
            extra: BTreeMap::new(),
        }
    }

    /// The same identity, valid for these audiences instead.
    pub fn with_audiences(mut self, audiences: &[&str]) -> TokenUser {
        self.audiences = audiences.iter().map(|a| a.to_string()).collect();
        self
    }
}

impl AccessRule {
    /// Denies `verb` on `resource` of `group` everywhere, for everyone.
    pub fn deny(verb: &str, group: &str, resource: &str) -> AccessRule {
        AccessRule {
            verb: Some(verb.into()),
            group: Some(group.into()),
            resource: Some(resource.into()),
            namespace: None,
            user: None,
        }
    }

    /// Only in this namespace.
    pub fn in_namespace(mut self, namespace: &str) -> AccessRule {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only for this user.
    pub fn for_user(mut self, user: &str) -> AccessRule {
        self.user = Some(user.into());
        self
    }

    fn matches(&self, user: &str, attributes: &Attributes<'_>) -> bool {
        let ok = |rule: &Option<String>, value: &str| rule.as_deref().is_none_or(|r| r == value);
        ok(&self.verb, attributes.verb)
            && ok(&self.group, attributes.group)
            && ok(&self.resource, attributes.resource)
            && ok(&self.user, user)
            && self.namespace.as_deref().is_none_or(|ns| attributes.namespace == Some(ns))
    }
}

impl Auth {
    pub(crate) fn register(&mut self, token: &str, user: TokenUser) {
        self.tokens.insert(token.to_string(), user);
    }

    pub(crate) fn deny(&mut self, rule: AccessRule) {
        self.denials.push(rule);
    }

    pub(crate) fn allow_all(&mut self) {
        self.denials.clear();
    }

    /// The user behind an `Authorization` header; `None` when it must be refused.
    pub(crate) fn authenticate(&self, authorization: Option<&str>) -> Option<User> {
        let token = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        match token.and_then(|t| self.tokens.get(t)) {
            Some(t) => Some(User {
                name: t.username.clone(),
                uid: t.uid.clone(),
                groups: t.groups.clone(),
                extra: t.extra.clone(),
            }),
            None if self.require_token => None,
            None => Some(User {
                name: "kubernetes-admin".into(),
                uid: String::new(),
                groups: vec!["kubeadm:cluster-admins".into(), "system:authenticated".into()],
                extra: BTreeMap::new(),
            }),
        }
    }

    pub(crate) fn allowed(&self, user: &str, attributes: &Attributes<'_>) -> bool {
        !self.denials.iter().any(|rule| rule.matches(user, attributes))
    }

    /// Answers a TokenReview body with its status filled in.
    pub(crate) fn token_review(&self, mut review: Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default().to_string();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let status = match self.tokens.get(&token) {
            None => json!({"user": {}}),
            Some(user) => {
                let targets = if wanted.is_empty() { vec![API_SERVER_AUDIENCE.to_string()] } else { wanted.clone() };
                let matched: Vec<&String> = targets.iter().filter(|a| user.audiences.contains(a)).collect();
                if matched.is_empty() {
                    json!({
                        "user": {},
                        "error": format!(
                            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                            user.audiences, targets
                        ),
                    })
                } else {
                    let mut u = json!({"username": user.username, "uid": user.uid, "groups": user.groups});
                    if !user.extra.is_empty() {
                        u["extra"] = json!(user.extra);
                    }
                    json!({"authenticated": true, "user": u, "audiences": matched})
                }
            }
        };
        review["status"] = status;
        review
    }

    /// Answers a SelfSubjectReview for `user`.
    pub(crate) fn self_subject_review(&self, user: &User, mut review: Value) -> Value {
        let mut info = json!({"username": user.name, "groups": user.groups});
        if !user.uid.is_empty() {
            info["uid"] = json!(user.uid);
        }
        review["status"] = json!({"userInfo": info});
        review
    }

    /// Answers a SelfSubjectAccessReview (for `user`) or a SubjectAccessReview (for its
    /// `spec.user`).
    pub(crate) fn access_review(&self, user: Option<&User>, mut review: Value) -> Value {
        let spec = &review["spec"];
        let name = match user {
            Some(u) => u.name.clone(),
            None => spec["user"].as_str().unwrap_or_default().to_string(),
        };
        let allowed = match spec.get("resourceAttributes") {
            Some(attrs) => {
                let text = |f: &str| attrs[f].as_str().unwrap_or_default().to_string();
                let resource = match attrs["subresource"].as_str() {
                    Some(sub) if !sub.is_empty() => format!("{}/{sub}", text("resource")),
                    _ => text("resource"),
                };
                let namespace = text("namespace");
                let verb = text("verb");
                let group = text("group");
                self.allowed(
                    &name,
                    &Attributes {
                        verb: &verb,
                        group: &group,
                        resource: &resource,
                        namespace: if namespace.is_empty() { None } else { Some(&namespace) },
                    },
                )
            }
            None => true,
        };
        review["status"] = if allowed {
            json!({"allowed": true, "reason": "allowed by the fake API server"})
        } else {
            json!({"allowed": false})
        };
        review
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_reviews_check_audiences() {
        let mut auth = Auth::default();
        auth.register("t1", TokenUser::service_account("ns", "web").with_audiences(&["identity.l5d.io"]));
        let review = |token: &str, audiences: Value| {
            auth.token_review(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                     "spec": {"token": token, "audiences": audiences}}))
        };
        let ok = review("t1", json!(["identity.l5d.io"]));
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["user"]["username"], "system:serviceaccount:ns:web");
        assert_eq!(ok["status"]["audiences"], json!(["identity.l5d.io"]));
        let wrong = review("t1", json!(["other"]));
        assert!(wrong["status"].get("authenticated").is_none());
        assert!(wrong["status"]["error"].as_str().unwrap().contains("token audiences"));
        let default_audience = review("t1", Value::Null);
        assert!(default_audience["status"]["error"].is_string());
        assert!(review("unknown", Value::Null)["status"].get("error").is_none());
    }

    #[test]
    fn denials_answer_access_reviews() {
        let mut auth = Auth::default();
        auth.deny(AccessRule::deny("create", "authentication.k8s.io", "tokenreviews"));
        let user = auth.authenticate(None).unwrap();
        let ask = |verb: &str| json!({"spec": {"resourceAttributes": {"verb": verb, "group": "authentication.k8s.io", "resource": "tokenreviews"}}});
        assert_eq!(auth.access_review(Some(&user), ask("create"))["status"]["allowed"], false);
        assert_eq!(auth.access_review(Some(&user), ask("get"))["status"]["allowed"], true);
        auth.require_token = true;
        assert!(auth.authenticate(Some("Bearer nope")).is_none());
    }
}
