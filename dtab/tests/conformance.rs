//! Known-answer vectors for the dtab language (see `FORMAT.md` in the shared conformance
//! folder). Every `*.json` file in `tests/vectors/` is loaded and every vector of every
//! category is checked; all failures are reported together, each with its file, category,
//! index and input.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use waymark_dtab::global::InetTarget;
use waymark_dtab::json::DelegateJson;
use waymark_dtab::{
    Addr, BindOptions, BindOutcome, BoundName, Dentry, Dtab, Lookup, Name, NameTree, Namer, Namers, Path, Prefix, bind,
    delegate,
};

/// A namer that fails every lookup with `error naming <full path>`.
struct ErrorNamer {
    prefix: Path,
}

/// A namer that binds every lookup: id = its prefix, residual = the rest. (Ids a namer
/// returns are relative to its mount, so the id it gives is empty.)
struct EchoNamer;

impl Namer for ErrorNamer {
    fn lookup(&self, path: &Path) -> Lookup {
        Lookup::Failed(format!("error naming {}", self.prefix.concat(path)))
    }
}

impl Namer for EchoNamer {
    fn lookup(&self, path: &Path) -> Lookup {
        Lookup::Found(NameTree::Leaf(Name::Bound(BoundName::new(Path::empty(), path.clone()))))
    }
}

type Check = Result<(), String>;

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("vector has no {name:?} field"))
}

fn text<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    field(v, name)?.as_str().ok_or_else(|| format!("{name:?} is not a string"))
}

fn dtab(v: &Value, name: &str) -> Result<Dtab, String> {
    text(v, name)?.parse().map_err(|e| format!("{name} does not parse: {e}"))
}

fn tree(v: &Value, name: &str) -> Result<NameTree<Path>, String> {
    text(v, name)?.parse().map_err(|e| format!("{name} does not parse: {e}"))
}

fn path(v: &Value, name: &str) -> Result<Path, String> {
    text(v, name)?.parse().map_err(|e| format!("{name} does not parse: {e}"))
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Check {
    if got == want { Ok(()) } else { Err(format!("{what}: got {got:?}, want {want:?}")) }
}

/// `parse_*`: parse the whole input; when `ok`, print and compare with `show`.
fn check_parse<T: std::fmt::Display, E: std::fmt::Display>(v: &Value, parse: impl Fn(&str) -> Result<T, E>) -> Check {
    let input = text(v, "input")?;
    let ok = field(v, "ok")?.as_bool().ok_or("\"ok\" is not a boolean")?;
    match (parse(input), ok) {
        (Ok(value), true) => match v.get("show").and_then(Value::as_str) {
            Some(show) => same("show", value.to_string().as_str(), show),
            None => Ok(()),
        },
        (Ok(value), false) => Err(format!("parsed as {value} but should fail")),
        (Err(e), true) => Err(format!("failed to parse: {e}")),
        (Err(_), false) => Ok(()),
    }
}

/// The structural JSON form of a parsed tree, as `parse_tree` vectors give it.
fn structure(tree: &NameTree<Path>) -> Value {
    match tree {
        NameTree::Neg => json!("neg"),
        NameTree::Fail => json!("fail"),
        NameTree::Empty => json!("empty"),
        NameTree::Leaf(p) => json!({ "leaf": p.to_string() }),
        NameTree::Alt(trees) => json!({ "alt": trees.iter().map(structure).collect::<Vec<_>>() }),
        NameTree::Union(branches) => json!({
            "union": branches.iter().map(|w| json!({"weight": w.weight.get(), "tree": structure(&w.tree)})).collect::<Vec<_>>()
        }),
    }
}

/// Numbers compare by value, so that `1` and `1.0` are equal.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| json_equal(a, b)))
        }
        _ => a == b,
    }
}

fn check_parse_tree(v: &Value) -> Check {
    check_parse(v, |s| s.parse::<NameTree<Path>>())?;
    if let Some(want) = v.get("tree") {
        let got = structure(&tree(v, "input")?);
        if !json_equal(&got, want) {
            return Err(format!("structure: got {got}, want {want}"));
        }
    }
    Ok(())
}

fn check_simplify(v: &Value) -> Check {
    let got = tree(v, "tree")?.simplified().to_string();
    same("simplified", got.as_str(), text(v, "simplified")?)
}

fn check_eval(v: &Value) -> Check {
    let got: Option<Vec<String>> = tree(v, "tree")?.eval().map(|set| {
        let mut shown: Vec<String> = set.iter().map(ToString::to_string).collect();
        shown.sort();
        shown
    });
    let want: Option<Vec<String>> = match field(v, "result")? {
        Value::Null => None,
        Value::Array(items) => {
            let mut items: Vec<String> = items.iter().map(|i| i.as_str().unwrap_or_default().to_string()).collect();
            items.sort();
            Some(items)
        }
        other => return Err(format!("result is neither null nor a list: {other}")),
    };
    same("eval", got, want)
}

fn check_lookup(v: &Value) -> Check {
    let got = dtab(v, "dtab")?.lookup(&path(v, "path")?).to_string();
    same("lookup", got.as_str(), text(v, "tree")?)
}

fn check_concat(v: &Value) -> Check {
    let got = dtab(v, "left")?.concat(&dtab(v, "right")?).to_string();
    same("concat", got.as_str(), text(v, "result")?)
}

/// The namers for a vector: its `test_namer`, if any.
fn namers(v: &Value) -> Result<Namers, String> {
    let mut namers = Namers::new();
    if let Some(spec) = v.get("test_namer") {
        let prefix = path(spec, "prefix")?;
        let namer: Arc<dyn Namer> = match text(spec, "kind")? {
            "error" => Arc::new(ErrorNamer { prefix: prefix.clone() }),
            "echo" => Arc::new(EchoNamer),
            other => return Err(format!("unknown test namer kind {other:?}")),
        };
        namers.mount(prefix, namer).map_err(|e| e.to_string())?;
    }
    Ok(namers)
}

fn check_bind(v: &Value) -> Check {
    let dtab = dtab(v, "dtab")?;
    let input = match v.get("tree") {
        Some(_) => tree(v, "tree")?,
        None => NameTree::Leaf(path(v, "path")?),
    };
    let mut options = BindOptions::default();
    if let Some(depth) = v.get("max_depth") {
        options.max_depth = depth.as_u64().ok_or("max_depth is not a number")? as usize;
    }
    let binding = bind(&dtab, &namers(v)?, &input, options);
    let want_error = v.get("error").and_then(Value::as_bool).unwrap_or(false);
    let tree = match (binding.outcome, want_error) {
        (BindOutcome::Failed(_), true) => return Ok(()),
        (BindOutcome::Bound(tree), false) => tree,
        (outcome, _) => {
            return Err(format!("got {outcome:?}, want {}", if want_error { "an error" } else { "a tree" }));
        }
    };
    same("bound", tree.to_string().as_str(), text(v, "bound")?)?;
    let leaves: Vec<Value> = tree
        .leaves()
        .iter()
        .map(|leaf| {
            json!({
                "id": leaf.name.id().to_string(),
                "residual": leaf.name.residual().to_string(),
                "weight": leaf.weight.map(|w| w.get()),
            })
        })
        .collect();
    let want = field(v, "leaves")?;
    if json_equal(&Value::Array(leaves.clone()), want) {
        Ok(())
    } else {
        Err(format!("leaves: got {leaves:?}, want {want}"))
    }
}

/// The address the harness knows for a bound id: IP literals of inet ids resolve, anything
/// else stays pending (as the echo namer's addresses do).
fn addr_of(name: &BoundName) -> Option<Addr> {
    let target = InetTarget::from_id(name.id())?;
    let ip = target.literal_ip()?;
    Some(Addr::bound([std::net::SocketAddr::new(ip, target.port)]))
}

/// Removes `bound.addr` members from `got` wherever `want` has none, recursively.
fn strip_unexpected_addrs(got: &mut Value, want: &Value) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            if let (Some(Value::Object(gb)), Some(Value::Object(wb))) = (g.get_mut("bound"), w.get("bound"))
                && !wb.contains_key("addr")
            {
                gb.remove("addr");
            }
            for (k, wv) in w {
                if let Some(gv) = g.get_mut(k) {
                    strip_unexpected_addrs(gv, wv);
                }
            }
        }
        (Value::Array(g), Value::Array(w)) => g.iter_mut().zip(w).for_each(|(g, w)| strip_unexpected_addrs(g, w)),
        _ => {}
    }
}

fn check_delegate(v: &Value) -> Check {
    let tree = delegate(&dtab(v, "dtab")?, &namers(v)?, &path(v, "path")?, waymark_dtab::DEFAULT_MAX_DEPTH)
        .map_err(|e| format!("delegation failed: {e}"))?;
    let mut got = serde_json::to_value(DelegateJson::from_tree(&tree, &mut addr_of)).map_err(|e| e.to_string())?;
    // The streaming writer renders exactly the same document.
    let addrs: std::collections::HashMap<BoundName, Addr> =
        tree.bound_names().into_iter().filter_map(|n| Some((n.clone(), addr_of(n)?))).collect();
    let streamed =
        waymark_dtab::json::delegate_json_within(&tree, &|n| addrs.get(n), usize::MAX).map_err(|e| e.to_string())?;
    if serde_json::from_str::<Value>(&streamed).map_err(|e| e.to_string())? != got {
        return Err(format!("streamed delegate JSON differs:\n  {streamed}\n  {got}"));
    }
    let want = field(v, "tree_shape")?;
    strip_unexpected_addrs(&mut got, want);
    if json_equal(&got, want) { Ok(()) } else { Err(format!("delegate tree:\n  got  {got}\n  want {want}")) }
}

fn check(category: &str, v: &Value) -> Check {
    match category {
        "parse_path" => check_parse(v, |s| s.parse::<Path>()),
        "parse_prefix" => check_parse(v, |s| s.parse::<Prefix>()),
        "parse_dentry" => check_parse(v, |s| s.parse::<Dentry>()),
        "parse_dtab" => check_parse(v, |s| s.parse::<Dtab>()),
        "parse_tree" => check_parse_tree(v),
        "simplify" => check_simplify(v),
        "eval" => check_eval(v),
        "lookup" => check_lookup(v),
        "dtab_concat" => check_concat(v),
        "bind" => check_bind(v),
        "delegate" => check_delegate(v),
        other => Err(format!("unknown category {other:?}: this harness cannot interpret it")),
    }
}

#[test]
fn every_vector_in_every_file_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the vectors folder exists")
        .map(|e| e.expect("readable folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vector files in {}", dir.display());

    let (mut checked, mut failures) = (0usize, String::new());
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable vector file");
        let top: Map<String, Value> = serde_json::from_str(&text).expect("the vector file is a JSON object");
        for (category, vectors) in top.iter().filter(|(k, _)| !k.starts_with('_')) {
            let Some(vectors) = vectors.as_array() else {
                let _ = writeln!(failures, "{}: {category}: not a list of vectors", file.display());
                continue;
            };
            for (index, vector) in vectors.iter().enumerate() {
                checked += 1;
                if let Err(why) = check(category, vector) {
                    let input = vector.get("input").or_else(|| vector.get("path")).or_else(|| vector.get("tree"));
                    let _ = writeln!(
                        failures,
                        "{}: {category}[{index}] (input {}): {why}",
                        file.file_name().unwrap_or_default().to_string_lossy(),
                        input.map(Value::to_string).unwrap_or_default(),
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} vectors failed:\n{failures}",
        failures.lines().filter(|l| !l.starts_with(' ')).count()
    );
    assert!(checked > 200, "only {checked} vectors found");
}
