//! Feeds arbitrary text to every parser. Whatever parses must print in a canonical form that
//! parses again and settles after one more round (weights print with two decimals, as the
//! reference prints them, so `1.004` prints as `1.00`, which reads back as the default weight
//! and then prints without one); nothing may panic or overflow the stack.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark_dtab::{Dentry, Dtab, NameTree, Path, Prefix};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(dtab) = text.parse::<Dtab>() {
        let settled: Dtab = dtab.to_string().parse::<Dtab>().expect("the canonical form parses");
        let shown = settled.to_string();
        assert_eq!(shown.parse::<Dtab>().expect("the settled form parses").to_string(), shown);
        let _ = dtab.simplified();
    }
    if let Ok(tree) = text.parse::<NameTree<Path>>() {
        let settled: NameTree<Path> = tree.to_string().parse().expect("the canonical form parses");
        let shown = settled.to_string();
        assert_eq!(shown.parse::<NameTree<Path>>().expect("the settled form parses").to_string(), shown);
        assert_eq!(tree.simplified().eval(), tree.eval());
    }
    if let Ok(path) = text.parse::<Path>() {
        assert_eq!(path.to_string().parse::<Path>().expect("round trip"), path);
    }
    if let Ok(prefix) = text.parse::<Prefix>() {
        assert_eq!(prefix.to_string().parse::<Prefix>().expect("round trip"), prefix);
    }
    let _ = text.parse::<Dentry>();
});
