//! Reads, per OpenAPI definition, the JSON field names and which fields are
//! required from the k8s-openapi crate's generated source: each type's file
//! starts with `// Generated from definition <name>`, its struct has
//! `Option<T>` for optional fields, and its serde code maps JSON names to
//! fields (`"podIPs" => Field::Key_pod_ips`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

use crate::rust_source;

#[derive(Debug)]
pub struct OpenapiField {
    pub json_name: String,
    /// Not `Option<T>` in k8s-openapi: the OpenAPI schema lists the field as
    /// required, which Kubernetes' OpenAPI generator does exactly for fields
    /// whose Go JSON tag lacks `omitempty`.
    pub required: bool,
}

#[derive(Debug)]
pub struct OpenapiDefinition {
    /// `io.k8s.api.core.v1.CSIDriver`: Go's spelling of the type name.
    pub full_name: String,
    pub fields: Vec<OpenapiField>,
}

#[derive(Debug)]
pub struct OpenapiResource {
    pub api_version: String,
    pub kind: String,
    pub definition: String,
}

pub struct OpenapiVersion {
    pub definitions: BTreeMap<String, OpenapiDefinition>,
    pub resources: Vec<OpenapiResource>,
}

/// Reads `src/<version_module>` (`v1_33`) of the k8s-openapi crate.
pub fn read(crate_dir: &Path, version_module: &str) -> anyhow::Result<OpenapiVersion> {
    let root = crate_dir.join("src").join(version_module);
    let files = rust_source::files_under(&root, &|path| {
        path.extension().is_some_and(|extension| extension == "rs") && !path.ends_with("mod.rs")
    })
    .with_context(|| format!("listing {}", root.display()))?;
    let mut definitions = BTreeMap::new();
    let mut resources = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let Some(full_name) = source
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("// Generated from definition "))
        else {
            continue;
        };
        let full_name = full_name.trim().to_string();
        let type_name = full_name.rsplit('.').next().unwrap_or_default();

        let json_names = json_names_by_rust_field(&source);
        if let Some(def) = rust_source::structs(&source)
            .into_iter()
            .find(|def| def.name == type_name)
        {
            let fields = def
                .fields
                .iter()
                .filter_map(|field| {
                    let json_name = json_names.get(&field.name)?;
                    Some(OpenapiField {
                        json_name: json_name.clone(),
                        required: !field.type_text.starts_with("Option<"),
                    })
                })
                .collect();
            definitions.insert(
                full_name.clone(),
                OpenapiDefinition {
                    full_name: full_name.clone(),
                    fields,
                },
            );
        }
        for (_, values) in
            rust_source::trait_impl_consts(&source, "crate::Resource", &["API_VERSION", "KIND"])
        {
            if let [Some(api_version), Some(kind)] = values.as_slice() {
                resources.push(OpenapiResource {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    definition: full_name.clone(),
                });
            }
        }
    }
    if definitions.is_empty() {
        bail!("no k8s-openapi definitions found under {}", root.display());
    }
    Ok(OpenapiVersion {
        definitions,
        resources,
    })
}

/// `"podIPs" => Field::Key_pod_ips,` → `pod_ips` ↦ `podIPs`.
fn json_names_by_rust_field(source: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in source.lines() {
        let trimmed = line.trim();
        let Some((quoted, target)) = trimmed.split_once(" => Field::Key_") else {
            continue;
        };
        let (Some(json_name), Some(rust_name)) = (
            quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')),
            target.strip_suffix(','),
        ) else {
            continue;
        };
        names.insert(rust_name.to_string(), json_name.to_string());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_rust_fields_to_json_names() {
        let source = r#"
                            "hostIPs" => Field::Key_host_ips,
                            "$ref" => Field::Key_ref_path,
                            _ => Field::Other,
        "#;
        let names = json_names_by_rust_field(source);
        assert_eq!(names["host_ips"], "hostIPs");
        assert_eq!(names["ref_path"], "$ref");
        assert_eq!(names.len(), 2);
    }
}
