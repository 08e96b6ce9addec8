//! Doc comments as prose in the generated schemas. A doc comment keeps its source line breaks
//! (wrapped at 100 columns in the code), and `kubectl explain` would print them in the middle of
//! sentences; here every paragraph becomes one line, so that the client wraps it to the
//! terminal. Blank lines still separate paragraphs, and a line that starts a list item (`- `,
//! `* `, `1. `) still starts a line.

/// `text` with each paragraph on one line.
pub fn reflow(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank_run = true;
            continue;
        }
        if !out.is_empty() {
            if blank_run {
                out.push_str("\n\n");
            } else if starts_list_item(line) {
                out.push('\n');
            } else {
                out.push(' ');
            }
        }
        blank_run = false;
        out.push_str(line);
    }
    out
}

fn starts_list_item(line: &str) -> bool {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    line.starts_with("- ")
        || line.starts_with("* ")
        || (digits > 0 && line[digits..].starts_with(". "))
}

/// Reflows every `description` string in a JSON document (a CRD), in place.
pub fn reflow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => *text = reflow(text),
                    _ => reflow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_doc_comment_becomes_one_line_per_paragraph() {
        let comment = "Where two policies select the same workload, the one with the more\n\
                       specific selector wins, then the older one, then the\n    \
                       one whose name sorts first.\n\n\
                       The loser reports a condition:\n\
                       - `Accepted` stays true,\n\
                       - `Ready` names the winner.\n";
        assert_eq!(
            reflow(comment),
            "Where two policies select the same workload, the one with the more specific \
             selector wins, then the older one, then the one whose name sorts first.\n\n\
             The loser reports a condition:\n- `Accepted` stays true,\n- `Ready` names the winner."
        );
        assert_eq!(reflow("One line."), "One line.");
    }

    #[test]
    fn the_committed_crd_holds_the_selector_rule_as_one_paragraph() {
        // config/crd/ is what users apply; `make crd-check` keeps it equal to what crdgen writes.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/crd/meshpolicies.yaml"
        );
        let yaml = std::fs::read_to_string(path).expect("the committed CRD");
        let folded: String = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("description: >-"))
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with("properties:"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            folded,
            "Policy for the workloads of this namespace that `selector` selects. Where two \
             policies select the same workload, the one with the more specific selector wins, \
             then the older one, then the one whose name sorts first; the other reports \
             `Ready=False` with reason `Overridden`."
        );
    }

    #[test]
    fn every_description_of_a_generated_crd_is_reflowed() {
        use kube::CustomResourceExt as _;
        let mut crd = serde_json::to_value(crate::MeshPolicy::crd()).expect("json");
        reflow_descriptions(&mut crd);
        let text = serde_json::to_string(&crd).expect("json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let description = spec["description"].as_str().expect("a description");
        assert!(
            !description.contains('\n') || description.contains("\n\n"),
            "{description}"
        );
        // No description keeps a line break inside a paragraph (lists excepted).
        for line in text.split("\\n") {
            assert!(!line.starts_with(' '), "an indented continuation: {line:?}");
        }
    }
}
