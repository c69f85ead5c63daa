//! Recursive binding of names through a dtab and namers.
//!
//! Binding is pure: namers answer from whatever state they hold now, through the [`Namer`]
//! trait. Every answer a configured namer gave is recorded in [`Binding::lookups`], so that a
//! long-running service can watch exactly those inputs and bind again when one changes.

use std::fmt;
use std::sync::Arc;

use crate::dtab::Dtab;
use crate::global;
use crate::path::Path;
use crate::tree::{NameTree, Weight, Weighted};
use crate::work::{MAX_WORK, Work};

/// The default limit on lookups in one chain of rewrites, as in Finagle.
pub const DEFAULT_MAX_DEPTH: usize = 100;

/// The hard limit on recursion while binding (lookups plus tree nesting), so that no dtab
/// can exhaust the stack, whatever limit a caller configures.
pub const MAX_RECURSION: usize = 250;

/// The most lookups one binding may make in all, across every branch. Unions bind every
/// branch, so a dtab whose dentries each refer to the next one twice would otherwise take
/// exponential time; a per-request override must not be able to do that to a router.
pub const MAX_LOOKUPS: usize = 10_000;

/// A name a namer has bound: `id` names a replica set, `residual` is the rest of the path,
/// which the destination may use (for example as a URL prefix).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundName {
    id: Path,
    residual: Path,
}

/// A leaf of a bound tree: the bound name and the weight of the innermost union branch
/// holding it (`None` outside any union).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BoundLeaf {
    /// The bound name.
    pub name: BoundName,
    /// The weight of the innermost enclosing union branch.
    pub weight: Option<Weight>,
}

/// What a namer gives back for a path: leaves are either bound, or paths that binding looks
/// up again (rewriting namers).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Name {
    /// A concrete, bound name.
    Bound(BoundName),
    /// A path to be looked up again.
    Path(Path),
}

/// A namer's answer about a path, as of now.
#[derive(Clone, PartialEq, Debug)]
pub enum Lookup {
    /// The answer; `NameTree::Neg` when the namer does not know the path.
    Found(NameTree<Name>),
    /// The namer does not know yet (it has not synchronised with its source).
    Pending,
    /// The lookup failed.
    Failed(String),
}

/// A service-discovery system mounted under a prefix of the name space (`/#/io.l5d.fs`).
///
/// A namer need not know where it is mounted: paths it is asked about and the ids of the
/// names it binds are relative to the mount prefix, which [`Namers`] adds back.
pub trait Namer: Send + Sync {
    /// Looks up `path`, which is relative to the namer's mount prefix. The answer reflects the
    /// namer's current state and must not block.
    fn lookup(&self, path: &Path) -> Lookup;
}

/// The configured namers, in order, each at its mount prefix. The built-in `/$/` namers are
/// always consulted last.
#[derive(Clone, Default)]
pub struct Namers {
    mounts: Vec<(Path, Arc<dyn Namer>)>,
}

/// A namer could not be mounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// The prefix was empty.
    #[error("a namer prefix may not be empty")]
    Empty,
    /// The prefix overlaps one already mounted.
    #[error("the namer prefix {new} overlaps {existing}")]
    Overlap {
        /// The prefix being mounted.
        new: Path,
        /// The prefix already mounted.
        existing: Path,
    },
}

/// One question binding asked a configured namer: the namer's mount prefix and the path it
/// was asked about (relative to the mount).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct NamerLookup {
    /// The namer's mount prefix.
    pub mount: Path,
    /// The path asked, relative to the mount.
    pub path: Path,
}

/// Limits and choices for binding.
#[derive(Clone, Copy, Debug)]
pub struct BindOptions {
    /// The most lookups one chain of rewrites may take (default 100).
    pub max_depth: usize,
    /// How alternatives (`a | b`) bind: as Finagle does (the first that is not negative), or
    /// keeping every usable alternative for the router to choose from per request.
    pub alternatives: Alternatives,
}

/// How an alternative binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Alternatives {
    /// Finagle's rule: the first alternative that is not negative is the result; the bound
    /// tree has no `Alt` nodes. What namerd's APIs and Linkerd 1 routers expect.
    #[default]
    First,
    /// Every alternative that binds, in order, up to and including the first that fails or is
    /// empty (those stop fall-through): the result is an `Alt` of them when there are several.
    /// A router can then fall through, per request, to the next alternative when one has no
    /// endpoints, which address state alone cannot express in Finagle's rule. An alternative
    /// that fails or is pending after one that bound ends the list instead of the binding.
    Keep,
}

/// Why binding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// A chain of rewrites took more lookups than allowed; usually a loop in the dtab.
    #[error("Max recursion level: {0} reached in Namer lookup")]
    MaxDepth(usize),
    /// The dtab nests trees too deeply to bind safely.
    #[error("name tree nesting exceeds {MAX_RECURSION} levels")]
    TooDeep,
    /// Binding needed more lookups in all than allowed.
    #[error("binding needs more than {MAX_LOOKUPS} lookups")]
    TooManyLookups,
    /// Binding needed more work in all than allowed: a very large dtab, destination or path.
    #[error("binding needs more than {MAX_WORK} steps; the dtab or the path is too large")]
    TooMuchWork,
    /// A namer failed.
    #[error("{0}")]
    Namer(String),
}

/// The current result of binding a name.
#[derive(Clone, PartialEq, Debug)]
pub enum BindOutcome {
    /// The bound tree: leaves are bound names; there are no `Alt` nodes.
    Bound(NameTree<BoundLeaf>),
    /// A namer the result depends on does not know yet.
    Pending,
    /// Binding failed.
    Failed(BindError),
}

/// The result of binding, with the namer lookups it depended on.
#[derive(Clone, Debug)]
pub struct Binding {
    /// The bound tree, or why there is none.
    pub outcome: BindOutcome,
    /// Every configured-namer lookup made, in order, without repeats.
    pub lookups: Vec<NamerLookup>,
}

/// The state of one binding in progress.
struct Binder<'a> {
    dtab: &'a Dtab,
    namers: &'a Namers,
    max_depth: usize,
    alternatives: Alternatives,
    lookups: Vec<NamerLookup>,
    lookups_made: usize,
    work: Work<'static>,
    /// Set when a safety limit was hit; binding then stops everywhere.
    aborted: Option<BindError>,
}

impl BoundName {
    /// A bound name with concrete id `id` and residual path `residual`.
    pub fn new(id: Path, residual: Path) -> Self {
        BoundName { id, residual }
    }

    /// The concrete name of the replica set.
    pub fn id(&self) -> &Path {
        &self.id
    }

    /// The part of the path the namer did not consume.
    pub fn residual(&self) -> &Path {
        &self.residual
    }
}

impl fmt::Debug for BoundName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bound({}, residual {})", self.id, self.residual)
    }
}

impl fmt::Display for BoundLeaf {
    /// A bound leaf prints as its id, which is how bound trees are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.name.id.fmt(f)
    }
}

impl fmt::Debug for BoundLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            Some(w) => write!(f, "{:?} weight {w:?}", self.name),
            None => write!(f, "{:?}", self.name),
        }
    }
}

impl Namers {
    /// No configured namers: only the built-in `/$/` namers.
    pub fn new() -> Self {
        Namers::default()
    }

    /// Mounts `namer` at `prefix` (for example `/#/io.l5d.fs`), after the ones already
    /// mounted. Prefixes may not be empty and may not overlap.
    pub fn mount(&mut self, prefix: Path, namer: Arc<dyn Namer>) -> Result<(), MountError> {
        if prefix.is_empty() {
            return Err(MountError::Empty);
        }
        if let Some((existing, _)) = self.mounts.iter().find(|(p, _)| p.starts_with(&prefix) || prefix.starts_with(p)) {
            return Err(MountError::Overlap { new: prefix, existing: existing.clone() });
        }
        self.mounts.push((prefix, namer));
        Ok(())
    }

    /// Asks the namers about `path`, as Linkerd does once the dtab had nothing to say: each
    /// configured namer whose prefix matches, in order, until one gives an answer other than
    /// `Neg`; then the built-in `/$/` namers. Bound ids come back with the mount prefix. Also
    /// returns the configured-namer lookups made.
    pub fn lookup(&self, path: &Path) -> (Lookup, Vec<NamerLookup>) {
        let mut asked = Vec::new();
        for (prefix, namer) in &self.mounts {
            if !path.starts_with(prefix) {
                continue;
            }
            let rest = path.drop(prefix.len());
            asked.push(NamerLookup { mount: prefix.clone(), path: rest.clone() });
            match namer.lookup(&rest) {
                Lookup::Found(NameTree::Neg) => continue,
                Lookup::Found(tree) => {
                    let tree = tree.map(&mut |name| match name {
                        Name::Bound(b) => Name::Bound(BoundName::new(prefix.concat(b.id()), b.residual().clone())),
                        unbound => unbound,
                    });
                    return (Lookup::Found(tree), asked);
                }
                answer => return (answer, asked),
            }
        }
        (global::lookup(path), asked)
    }
}

impl fmt::Debug for Namers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.mounts.iter().map(|(p, _)| p)).finish()
    }
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions { max_depth: DEFAULT_MAX_DEPTH, alternatives: Alternatives::First }
    }
}

impl Binding {
    /// The bound tree, if binding succeeded.
    pub fn tree(&self) -> Option<&NameTree<BoundLeaf>> {
        match &self.outcome {
            BindOutcome::Bound(tree) => Some(tree),
            _ => None,
        }
    }
}

/// Binds `tree` through `dtab`, then the configured `namers`, then the built-in namers,
/// following Finagle's rules: a dtab lookup that matches nothing falls back to the namers;
/// alternatives are tried in order and only a negative result falls through; a union keeps
/// every branch that bound and tolerates failed ones as long as one succeeded.
pub fn bind(dtab: &Dtab, namers: &Namers, tree: &NameTree<Path>, options: BindOptions) -> Binding {
    let mut binder = Binder {
        dtab,
        namers,
        max_depth: options.max_depth,
        alternatives: options.alternatives,
        lookups: Vec::new(),
        lookups_made: 0,
        work: Work::new(MAX_WORK, None),
        aborted: None,
    };
    let tree = tree.map_ref(&mut |p: &Path| Name::Path(p.clone()));
    let outcome = binder.bind(&tree, 0, None, 0);
    // A union tolerates failed branches, but hitting a safety limit must fail the whole
    // binding: otherwise the result would depend on which branches happened to go first.
    let outcome = match binder.aborted {
        Some(e) => BindOutcome::Failed(e),
        None => outcome,
    };
    Binding { outcome, lookups: binder.lookups }
}

/// Binds a single path; see [`bind`].
pub fn bind_path(dtab: &Dtab, namers: &Namers, path: &Path, options: BindOptions) -> Binding {
    bind(dtab, namers, &NameTree::Leaf(path.clone()), options)
}

impl Binder<'_> {
    /// One lookup step for an unbound path: the dtab first, the namers if it said `Neg`.
    ///
    /// "Said `Neg`" is Finagle's `DefaultInterpreter` rule, exactly: the dtab's answer *is*
    /// the negative tree, which happens when no dentry matches and also when the one matching
    /// dentry's destination is `~`. Two matching `~` dentries answer `Alt(~, ~)`, which is not
    /// `Neg` and does not fall back. Fails when the work it would take passes the budget.
    fn lookup(&mut self, path: &Path) -> Result<Lookup, BindError> {
        self.lookups_made += 1;
        self.work.charge_lookup(self.dtab.len()).map_err(|_| BindError::TooMuchWork)?;
        let mut matches: Vec<NameTree<Name>> = Vec::new();
        for d in self.dtab.iter().rev().filter(|d| d.prefix().matches(path)) {
            self.work.charge_rewrite(d, path).map_err(|_| BindError::TooMuchWork)?;
            let residual = path.drop(d.prefix().len());
            matches.push(d.dst().map_ref(&mut |leaf: &Path| Name::Path(leaf.concat(&residual))));
        }
        let answer = match matches.len() {
            0 => NameTree::Neg,
            1 => matches.pop().unwrap_or(NameTree::Neg),
            _ => NameTree::Alt(matches),
        };
        if !matches!(answer, NameTree::Neg) {
            return Ok(Lookup::Found(answer));
        }
        let (answer, asked) = self.namers.lookup(path);
        for lookup in asked {
            if !self.lookups.contains(&lookup) {
                self.lookups.push(lookup);
            }
        }
        Ok(answer)
    }

    fn abort(&mut self, e: BindError) -> BindOutcome {
        self.aborted = Some(e.clone());
        BindOutcome::Failed(e)
    }

    /// Binds `tree`. `depth` counts lookups in this chain, `weight` is the weight of the
    /// innermost enclosing union branch, and `frames` counts recursion for the stack guard.
    fn bind(&mut self, tree: &NameTree<Name>, depth: usize, weight: Option<Weight>, frames: usize) -> BindOutcome {
        if depth > self.max_depth {
            return BindOutcome::Failed(BindError::MaxDepth(self.max_depth));
        }
        if let Some(e) = &self.aborted {
            return BindOutcome::Failed(e.clone());
        }
        if frames > MAX_RECURSION {
            return self.abort(BindError::TooDeep);
        }
        match tree {
            NameTree::Leaf(Name::Path(_)) if self.lookups_made >= MAX_LOOKUPS => self.abort(BindError::TooManyLookups),
            NameTree::Leaf(Name::Path(path)) => match self.lookup(path) {
                Ok(Lookup::Found(next)) => self.bind(&next, depth + 1, weight, frames + 1),
                Ok(Lookup::Pending) => BindOutcome::Pending,
                Ok(Lookup::Failed(message)) => BindOutcome::Failed(BindError::Namer(message)),
                Err(e) => self.abort(e),
            },
            NameTree::Leaf(Name::Bound(name)) => {
                BindOutcome::Bound(NameTree::Leaf(BoundLeaf { name: name.clone(), weight }))
            }
            NameTree::Neg => BindOutcome::Bound(NameTree::Neg),
            NameTree::Fail => BindOutcome::Bound(NameTree::Fail),
            NameTree::Empty => BindOutcome::Bound(NameTree::Empty),
            NameTree::Alt(trees) if trees.is_empty() => BindOutcome::Bound(NameTree::Neg),
            NameTree::Union(branches) if branches.is_empty() => BindOutcome::Bound(NameTree::Neg),
            NameTree::Union(branches) if branches.len() == 1 => {
                self.bind(&branches[0].tree, depth, Some(branches[0].weight), frames + 1)
            }
            NameTree::Alt(trees) if trees.len() == 1 => self.bind(&trees[0], depth, weight, frames + 1),
            NameTree::Union(branches) => {
                let mut bound = Vec::with_capacity(branches.len());
                let mut first_failure = None;
                for branch in branches {
                    match self.bind(&branch.tree, depth, Some(branch.weight), frames + 1) {
                        BindOutcome::Bound(tree) => bound.push(Weighted::new(branch.weight, tree)),
                        BindOutcome::Failed(e) => {
                            first_failure.get_or_insert(e);
                        }
                        BindOutcome::Pending => {}
                    }
                }
                if !bound.is_empty() {
                    BindOutcome::Bound(NameTree::Union(bound).simplified())
                } else if let Some(e) = first_failure {
                    BindOutcome::Failed(e)
                } else {
                    BindOutcome::Pending
                }
            }
            NameTree::Alt(trees) if self.alternatives == Alternatives::First => {
                for tree in trees {
                    match self.bind(tree, depth, weight, frames + 1) {
                        BindOutcome::Bound(NameTree::Neg) => continue,
                        // Anything else, including a failure or an unknown, ends fail-over.
                        other => return other,
                    }
                }
                BindOutcome::Bound(NameTree::Neg)
            }
            NameTree::Alt(trees) => {
                let mut kept = Vec::new();
                for tree in trees {
                    match self.bind(tree, depth, weight, frames + 1) {
                        BindOutcome::Bound(NameTree::Neg) => continue,
                        BindOutcome::Bound(stop @ (NameTree::Fail | NameTree::Empty)) => {
                            kept.push(stop);
                            break;
                        }
                        BindOutcome::Bound(tree) => kept.push(tree),
                        // Before anything bound, this is the answer, as with Finagle's rule;
                        // after, the alternatives so far are still usable.
                        other if kept.is_empty() => return other,
                        _ => break,
                    }
                }
                BindOutcome::Bound(match kept.len() {
                    0 => NameTree::Neg,
                    1 => kept.pop().unwrap_or(NameTree::Neg),
                    _ => NameTree::Alt(kept),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Static(Lookup);

    impl Namer for Static {
        fn lookup(&self, _path: &Path) -> Lookup {
            self.0.clone()
        }
    }

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    #[test]
    fn mounts_may_not_overlap() {
        let mut namers = Namers::new();
        let neg: Arc<dyn Namer> = Arc::new(Static(Lookup::Found(NameTree::Neg)));
        namers.mount(p("/#/a"), neg.clone()).unwrap();
        assert!(matches!(namers.mount(p("/#/a/b"), neg.clone()), Err(MountError::Overlap { .. })));
        assert!(matches!(namers.mount(p("/#"), neg.clone()), Err(MountError::Overlap { .. })));
        assert_eq!(namers.mount(Path::empty(), neg.clone()), Err(MountError::Empty));
        namers.mount(p("/#/b"), neg).unwrap();
    }

    #[test]
    fn lookups_record_which_namer_inputs_were_used() {
        let mut namers = Namers::new();
        namers.mount(p("/#/pending"), Arc::new(Static(Lookup::Pending))).unwrap();
        namers.mount(p("/#/neg"), Arc::new(Static(Lookup::Found(NameTree::Neg)))).unwrap();
        let dtab: Dtab = "/svc=>/#/neg | /$/inet/1; /other=>/#/pending".parse().unwrap();
        let binding = bind_path(&dtab, &namers, &p("/svc/web"), BindOptions::default());
        assert_eq!(binding.tree().unwrap().to_string(), "/$/inet/1");
        assert_eq!(binding.lookups, vec![NamerLookup { mount: p("/#/neg"), path: p("/web") }]);
        let binding = bind_path(&dtab, &namers, &p("/other/x"), BindOptions::default());
        assert_eq!(binding.outcome, BindOutcome::Pending);
        assert_eq!(binding.lookups, vec![NamerLookup { mount: p("/#/pending"), path: p("/x") }]);
    }

    #[test]
    fn pending_union_branches_are_skipped_when_another_bound() {
        let mut namers = Namers::new();
        namers.mount(p("/#/pending"), Arc::new(Static(Lookup::Pending))).unwrap();
        let dtab: Dtab = "/a=>/#/pending & /$/inet/1".parse().unwrap();
        let binding = bind_path(&dtab, &namers, &p("/a"), BindOptions::default());
        assert_eq!(binding.tree().unwrap().to_string(), "/$/inet/1");
    }

    #[test]
    fn kept_alternatives_leave_the_choice_to_the_router() {
        let dtab: Dtab =
            "/a=>~ | /$/inet/1 | /$/inet/2 | $ | /$/inet/3;/b=>/$/inet/1 | /$/bad.Namer;/c=>/$/bad.Namer | /$/inet/1"
                .parse()
                .unwrap();
        let keep = BindOptions { alternatives: Alternatives::Keep, ..BindOptions::default() };
        let shown = |path: &str, options| bind_path(&dtab, &Namers::new(), &p(path), options).outcome;
        let tree = |o: BindOutcome| match o {
            BindOutcome::Bound(t) => t.to_string(),
            other => format!("{other:?}"),
        };
        // Finagle's rule: the first alternative that is not negative.
        assert_eq!(tree(shown("/a", BindOptions::default())), "/$/inet/1");
        // Kept: every usable alternative, up to the empty one that stops fall-through.
        assert_eq!(tree(shown("/a", keep)), "/$/inet/1 | /$/inet/2 | $");
        // A failure after a bound alternative ends the list; before one, it is the answer.
        assert_eq!(tree(shown("/b", keep)), "/$/inet/1");
        assert!(matches!(shown("/c", keep), BindOutcome::Failed(BindError::Namer(_))));
        assert!(matches!(shown("/c", BindOptions::default()), BindOutcome::Failed(BindError::Namer(_))));
    }

    #[test]
    fn exponential_dtabs_are_cut_off() {
        let dtab: Dtab =
            (0..40).map(|i| format!("/n{i}=>/n{j} & /n{j}", j = i + 1)).collect::<Vec<_>>().join(";").parse().unwrap();
        let binding = bind_path(&dtab, &Namers::new(), &p("/n0"), BindOptions::default());
        assert_eq!(binding.outcome, BindOutcome::Failed(BindError::TooManyLookups));
    }

    #[test]
    fn large_dtabs_and_long_paths_are_cut_off_by_work_not_only_lookups() {
        // Few lookups, each scanning 60,000 dentries.
        let wide: Dtab = (0..60_000).map(|i| format!("/x{i}=>/y")).collect::<Vec<_>>().join(";").parse().unwrap();
        let chain: Dtab = (0..50).map(|i| format!("/n{i}=>/n{}", i + 1)).collect::<Vec<_>>().join(";").parse().unwrap();
        let binding = bind_path(&wide.concat(&chain), &Namers::new(), &p("/n0"), BindOptions::default());
        assert_eq!(binding.outcome, BindOutcome::Failed(BindError::TooMuchWork));
        // One rewrite of a wide destination with a long rest of the path on every leaf.
        let fanout: Dtab =
            format!("/svc=>{}", (0..5_000).map(|i| format!("/a{i}")).collect::<Vec<_>>().join(" | ")).parse().unwrap();
        let long = format!("/svc{}", "/x".repeat(1_000));
        let binding = bind_path(&fanout, &Namers::new(), &p(&long), BindOptions::default());
        assert_eq!(binding.outcome, BindOutcome::Failed(BindError::TooMuchWork));
        // The same destination with a short path binds.
        let binding = bind_path(&fanout, &Namers::new(), &p("/svc/x"), BindOptions::default());
        assert_eq!(binding.outcome, BindOutcome::Bound(NameTree::Neg));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 64 levels of parentheses per dentry, through a chain of 100 rewrites.
        let nested = |target: &str| format!("{}{target} & /x{}", "(/x & ".repeat(63), ")".repeat(63));
        let dtab: Dtab = (0..100)
            .map(|i| format!("/n{i}=>{}", nested(&format!("/n{}", i + 1))))
            .collect::<Vec<_>>()
            .join(";")
            .parse()
            .unwrap();
        let binding = bind_path(&dtab, &Namers::new(), &p("/n0"), BindOptions::default());
        assert!(matches!(binding.outcome, BindOutcome::Failed(BindError::TooDeep)), "{:?}", binding.outcome);
    }
}
