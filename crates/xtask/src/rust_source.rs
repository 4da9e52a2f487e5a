//! Just enough reading of machine-generated Rust source (prost output in
//! k8s-pb, the k8s-openapi codegen) to list structs, their fields and a few
//! constant strings. Both generators emit one item per line in a fixed shape,
//! so a line scanner suffices and avoids pulling a Rust parser into the build.

use std::path::{Path, PathBuf};

/// One `pub struct` with its fields, in declaration order.
#[derive(Debug)]
pub struct StructDef {
    pub name: String,
    pub fields: Vec<StructField>,
}

#[derive(Debug)]
pub struct StructField {
    /// The Rust field name, without a raw-identifier prefix (`r#type` → `type`).
    pub name: String,
    /// The attribute lines just above the field (`#[prost(...)]`), verbatim.
    pub attributes: Vec<String>,
    /// The field's type with all whitespace removed, which may have spanned
    /// several lines in the source.
    pub type_text: String,
}

/// Every `pub struct Name { ... }` at any indentation in `source`.
pub fn structs(source: &str) -> Vec<StructDef> {
    let mut found = Vec::new();
    let mut current: Option<StructDef> = None;
    let mut attributes: Vec<String> = Vec::new();
    // A field whose type has not reached its closing `,` yet.
    let mut open_field: Option<StructField> = None;

    for line in source.lines() {
        let trimmed = line.trim();
        if let Some(field) = open_field.as_mut() {
            field.type_text.push_str(&strip_whitespace(trimmed));
            if type_is_complete(&field.type_text) {
                let mut field = open_field.take().expect("checked above");
                field.type_text.pop();
                if let Some(def) = current.as_mut() {
                    def.fields.push(field);
                }
            }
            continue;
        }
        let Some(def) = current.as_mut() else {
            if let Some(rest) = trimmed.strip_prefix("pub struct ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let def = StructDef {
                    name,
                    fields: Vec::new(),
                };
                if trimmed.ends_with('{') {
                    current = Some(def);
                } else if trimmed.ends_with("{}") || trimmed.ends_with(';') {
                    found.push(def);
                }
                attributes.clear();
            }
            continue;
        };
        if trimmed == "}" {
            found.push(current.take().expect("inside a struct"));
            continue;
        }
        if trimmed.starts_with("#[") {
            attributes.push(trimmed.to_string());
            continue;
        }
        if trimmed.starts_with("//") || trimmed.is_empty() {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("pub ") {
            let Some((name, type_start)) = rest.split_once(':') else {
                continue;
            };
            let field = StructField {
                name: name.trim().trim_start_matches("r#").to_string(),
                attributes: std::mem::take(&mut attributes),
                type_text: strip_whitespace(type_start),
            };
            if type_is_complete(&field.type_text) {
                let mut field = field;
                field.type_text.pop();
                def.fields.push(field);
            } else {
                open_field = Some(field);
            }
        }
    }
    found
}

/// The string value of `const NAME: &'static str = "value";` inside the
/// `impl <trait_path> for <type_name>` blocks of `source`, per type.
pub fn trait_impl_consts(
    source: &str,
    trait_path: &str,
    const_names: &[&str],
) -> Vec<(String, Vec<Option<String>>)> {
    let header = format!("impl {trait_path} for ");
    let mut found = Vec::new();
    let mut current: Option<(String, Vec<Option<String>>)> = None;
    for line in source.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(&header) {
            let type_name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            current = Some((type_name, vec![None; const_names.len()]));
            continue;
        }
        let Some((_, values)) = current.as_mut() else {
            continue;
        };
        if trimmed == "}" {
            found.push(current.take().expect("inside an impl"));
            continue;
        }
        for (slot, const_name) in values.iter_mut().zip(const_names) {
            let prefix = format!("const {const_name}: &'static str = \"");
            if let Some(rest) = trimmed.strip_prefix(&prefix) {
                *slot = rest.strip_suffix("\";").map(str::to_string);
            }
        }
    }
    found
}

/// All files under `dir` (recursively) whose name satisfies `keep`, sorted so
/// that the generated output does not depend on directory iteration order.
pub fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut pending = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if keep(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn strip_whitespace(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// A field's type ends at a `,` outside any `<...>`.
fn type_is_complete(type_text: &str) -> bool {
    let opened = type_text.matches('<').count();
    let closed = type_text.matches('>').count();
    type_text.ends_with(',') && opened == closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_line_field_types_and_attributes() {
        let source = r#"
/// Doc.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LimitRangeItem {
    /// Max usage.
    #[prost(btree_map = "string, message", tag = "2")]
    pub max: ::prost::alloc::collections::BTreeMap<
        ::prost::alloc::string::String,
        super::Quantity,
    >,
    #[prost(string, optional, tag = "1")]
    pub r#type: ::core::option::Option<::prost::alloc::string::String>,
}
pub struct Empty {}
impl crate::Resource for Pod {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "Pod";
}
"#;
        let defs = structs(source);
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].name, "LimitRangeItem");
        assert_eq!(defs[0].fields[0].name, "max");
        assert_eq!(
            defs[0].fields[0].type_text,
            "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,super::Quantity,>"
        );
        assert_eq!(
            defs[0].fields[0].attributes,
            vec![r#"#[prost(btree_map = "string, message", tag = "2")]"#]
        );
        assert_eq!(defs[0].fields[1].name, "type");
        assert_eq!(defs[1].name, "Empty");
        let consts = trait_impl_consts(source, "crate::Resource", &["API_VERSION", "KIND"]);
        assert_eq!(
            consts,
            vec![(
                "Pod".to_string(),
                vec![Some("v1".to_string()), Some("Pod".to_string())]
            )]
        );
    }
}
