//! Feeds arbitrary text to every parser. Whatever parses must print canonically and parse
//! back to the same value; nothing may panic or overflow the stack.

#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark_dtab::{Dentry, Dtab, NameTree, Path, Prefix};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(dtab) = text.parse::<Dtab>() {
        let shown = dtab.to_string();
        let again: Dtab = shown.parse().expect("the canonical form parses");
        // Weights print with two decimals, so compare canonical forms rather than values.
        assert_eq!(again.to_string(), shown);
        let _ = dtab.simplified();
    }
    if let Ok(tree) = text.parse::<NameTree<Path>>() {
        let shown = tree.to_string();
        let again: NameTree<Path> = shown.parse().expect("the canonical form parses");
        assert_eq!(again.to_string(), shown);
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
