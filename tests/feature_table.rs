//! The feature tables (crate docs in `src/lib.rs` and the README) list
//! exactly the features of Cargo.toml: a feature added without a row, or a
//! row left behind by a removed feature, fails here.

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys of Cargo.toml's `[features]` table, without `default`.
fn cargo_features(manifest: &str) -> BTreeSet<String> {
    let mut in_features = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if !in_features || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unexpected line in [features]: {line}"));
        let key = key.trim().trim_matches('"');
        if key != "default" {
            out.insert(key.to_owned());
        }
    }
    out
}

/// The feature names in the first column of a Markdown table whose header
/// starts with `| feature |`: rows of the form ``| `name` | ...``.
fn table_features(text: &str, line_prefix: &str) -> BTreeSet<String> {
    let mut lines = text
        .lines()
        .filter_map(|l| l.strip_prefix(line_prefix))
        .map(str::trim)
        .skip_while(|l| !l.starts_with("| feature |"));
    assert!(lines.next().is_some(), "no `| feature |` table found");
    let mut out = BTreeSet::new();
    for row in lines.take_while(|l| l.starts_with('|')) {
        let first = row.trim_start_matches('|').split('|').next().unwrap_or("");
        if let Some(name) = first
            .trim()
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
        {
            out.insert(name.to_owned());
        }
    }
    out
}

fn check(table: &str, rows: &BTreeSet<String>, features: &BTreeSet<String>) {
    let missing: Vec<_> = features.difference(rows).collect();
    let unknown: Vec<_> = rows.difference(features).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{table}: features without a row: {missing:?}; rows without a feature: {unknown:?}"
    );
}

#[test]
fn crate_docs_list_every_cargo_feature() {
    let features = cargo_features(&read("Cargo.toml"));
    assert!(features.contains("tokio") && features.contains("embassy-net"));
    let rows = table_features(&read("src/lib.rs"), "//!");
    check("src/lib.rs", &rows, &features);
}

#[test]
fn readme_lists_every_cargo_feature() {
    let features = cargo_features(&read("Cargo.toml"));
    let rows = table_features(&read("README.md"), "");
    check("README.md", &rows, &features);
}

#[test]
fn the_parsers_see_what_is_there() {
    let manifest = "[package]\nname = \"x\"\n[features]\ndefault = []\n## doc\na = []\n\"b-c\" = [\"a\"]\n\n[dependencies]\nd = \"1\"\n";
    let got: Vec<_> = cargo_features(manifest).into_iter().collect();
    assert_eq!(got, ["a", "b-c"]);
    let doc = "//! | feature | what |\n//! |---|---|\n//! | *(none)* | core |\n//! | `a` | x |\n//! | `b-c` | y |\n//!\n//! | `z` | after the table |\n";
    let got: Vec<_> = table_features(doc, "//!").into_iter().collect();
    assert_eq!(got, ["a", "b-c"]);
}
