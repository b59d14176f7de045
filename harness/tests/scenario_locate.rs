//! The YAML position locator against generated documents: it finds every field exactly,
//! and never panics on arbitrary text (neither does the whole scenario parser).

use harness::scenario::{parse_scenario, SourceMap};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Tree {
    Leaf(String),
    Map(Vec<(String, Tree)>),
    Seq(Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        "[a-z0-9]{1,8}".prop_map(Tree::Leaf),
        "[a-z ]{0,6}".prop_map(|s| Tree::Leaf(format!("\"{s}: #x\""))),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::btree_map("[a-z][a-z_]{0,5}", inner.clone(), 1..5)
                .prop_map(|m| Tree::Map(m.into_iter().collect())),
            prop::collection::vec(inner, 1..5).prop_map(Tree::Seq),
        ]
    })
}

/// Emits `tree` as block YAML at `indent`, recording (path, line, column) for every node the
/// locator should find. Sequence items that are collections alternate between the inline form
/// (`- key: v`, `- - x`) and the nested form (`-` alone, the collection below).
fn emit(tree: &Tree, indent: usize, path: &str, lines: &mut Vec<String>, expect: &mut Vec<(String, usize, usize)>) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Leaf(_) => unreachable!("leaves are emitted by their parent"),
        Tree::Map(entries) => {
            for (key, value) in entries {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match value {
                    Tree::Leaf(text) => {
                        lines.push(format!("{pad}{key}: {text}  # comment"));
                        expect.push((child, lines.len(), indent + key.len() + 3));
                    }
                    nested => {
                        lines.push(format!("{pad}{key}:"));
                        expect.push((child.clone(), lines.len(), indent + 1));
                        emit(nested, indent + 2, &child, lines, expect);
                    }
                }
            }
        }
        Tree::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let child = format!("{path}[{i}]");
                match item {
                    Tree::Leaf(text) => {
                        lines.push(format!("{pad}- {text}"));
                        expect.push((child, lines.len(), indent + 3));
                    }
                    nested if i % 2 == 0 => {
                        // Inline: emit at indent + 2, then turn the first line's indent into "- ".
                        let first = lines.len();
                        expect.push((child.clone(), first + 1, indent + 3));
                        emit(nested, indent + 2, &child, lines, expect);
                        lines[first].replace_range(indent..indent + 2, "- ");
                    }
                    nested => {
                        lines.push(format!("{pad}-"));
                        expect.push((child.clone(), lines.len(), indent + 1));
                        emit(nested, indent + 2, &child, lines, expect);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn locates_every_field_of_generated_documents(
        entries in prop::collection::btree_map("[a-z][a-z_]{0,5}", tree(), 1..5),
    ) {
        let root = Tree::Map(entries.into_iter().collect());
        let (mut lines, mut expect) = (Vec::new(), Vec::new());
        lines.push("# generated".to_string());
        emit(&root, 0, "", &mut lines, &mut expect);
        let text = lines.join("\n") + "\n";
        // The generator writes valid YAML.
        prop_assert!(serde_yaml::from_str::<serde_yaml::Value>(&text).is_ok(), "invalid YAML:\n{}", text);
        let map = SourceMap::parse(&text);
        for (path, line, column) in &expect {
            let (pos, exact) = map.locate(path);
            prop_assert!(exact, "{} not found in:\n{}", path, text);
            prop_assert_eq!((pos.line, pos.column), (*line, *column), "{} in:\n{}", path, text);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_text(text in "[-a-z0-9:\\[\\]{}&*!|>'\" #,\n]{0,200}") {
        let map = SourceMap::parse(&text);
        let _ = map.locate("a.b[0].c");
        let _ = map.path_at_line(3);
        let _ = map.alias_expansion();
        let _ = parse_scenario(&text, "fuzz.yaml");
    }
}
