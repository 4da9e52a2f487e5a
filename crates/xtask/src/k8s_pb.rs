//! Reads the protobuf messages (field numbers, wire types) and the
//! (apiVersion, kind) of top-level resources from the k8s-pb crate's
//! prost-generated source.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

use crate::rust_source;

/// A protobuf scalar type as prost names it in `#[prost(<type>, ...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueType {
    Scalar(Scalar),
    /// The referenced message's full name (`io.k8s.api.core.v1.PodSpec`).
    Message(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cardinality {
    Single,
    Repeated,
    /// `map<string, V>`: Kubernetes map keys are always strings.
    Map,
}

#[derive(Debug)]
pub struct PbField {
    /// prost's snake_case name (`pod_ips`).
    pub name: String,
    pub tag: u32,
    pub cardinality: Cardinality,
    pub value: ValueType,
}

#[derive(Debug)]
pub struct PbMessage {
    /// The OpenAPI-style full name with prost's spelling of the type name
    /// (`io.k8s.api.core.v1.CsiDriver`; prost re-cases acronyms).
    pub full_name: String,
    pub package: String,
    pub type_name: String,
    pub fields: Vec<PbField>,
}

#[derive(Debug)]
pub struct PbResource {
    pub api_version: String,
    pub kind: String,
    pub message: String,
}

pub struct PbCrate {
    pub messages: BTreeMap<String, PbMessage>,
    pub resources: Vec<PbResource>,
}

pub fn read(crate_dir: &Path) -> anyhow::Result<PbCrate> {
    let src = crate_dir.join("src");
    let files = rust_source::files_under(&src, &|path| path.ends_with("mod.rs"))
        .with_context(|| format!("listing {}", src.display()))?;
    let mut messages = BTreeMap::new();
    let mut resources = Vec::new();
    for file in files {
        let module: Vec<String> = file
            .parent()
            .and_then(|dir| dir.strip_prefix(&src).ok())
            .map(|relative| {
                relative
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if module.is_empty() {
            continue;
        }
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let package = package_of(&module);
        for def in rust_source::structs(&source) {
            let mut fields = Vec::new();
            for field in &def.fields {
                let parsed = parse_field(&module, field).with_context(|| {
                    format!("field {}.{} in {}", def.name, field.name, file.display())
                })?;
                fields.push(parsed);
            }
            let full_name = format!("{package}.{}", def.name);
            messages.insert(
                full_name.clone(),
                PbMessage {
                    full_name,
                    package: package.clone(),
                    type_name: def.name,
                    fields,
                },
            );
        }
        for (type_name, values) in
            rust_source::trait_impl_consts(&source, "crate::Resource", &["API_VERSION", "KIND"])
        {
            if let [Some(api_version), Some(kind)] = values.as_slice() {
                resources.push(PbResource {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    message: format!("{package}.{type_name}"),
                });
            }
        }
    }
    if messages.is_empty() {
        bail!("no prost messages found under {}", src.display());
    }
    Ok(PbCrate {
        messages,
        resources,
    })
}

/// `api/core/v1` → `io.k8s.api.core.v1`; `apiextensions_apiserver/pkg/...` →
/// `io.k8s.apiextensions-apiserver.pkg...` (the Go module path, as the
/// OpenAPI definition names spell it).
pub fn package_of(module: &[String]) -> String {
    let mut package = String::from("io.k8s");
    for (index, segment) in module.iter().enumerate() {
        package.push('.');
        if index == 0 {
            package.push_str(&segment.replace('_', "-"));
        } else {
            package.push_str(segment);
        }
    }
    package
}

fn parse_field(module: &[String], field: &rust_source::StructField) -> anyhow::Result<PbField> {
    let attribute = field
        .attributes
        .iter()
        .find_map(|attribute| attribute.strip_prefix("#[prost("))
        .and_then(|rest| rest.strip_suffix(")]"))
        .context("no #[prost(...)] attribute")?;
    let tag: u32 = attribute
        .split("tag = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no tag")?
        .parse()
        .context("tag is not a number")?;

    if let Some(rest) = attribute.strip_prefix("btree_map = \"") {
        let (key, value) = rest
            .split('"')
            .next()
            .and_then(|types| types.split_once(", "))
            .context("malformed btree_map attribute")?;
        if key != "string" {
            bail!("map key type {key} is not string");
        }
        let value = if value == "message" {
            let value_type = generic_arguments(&field.type_text, "BTreeMap<")
                .and_then(|arguments| arguments.get(1).cloned())
                .context("no map value type")?;
            ValueType::Message(resolve_type_path(module, &value_type)?)
        } else {
            ValueType::Scalar(scalar(value)?)
        };
        return Ok(PbField {
            name: field.name.clone(),
            tag,
            cardinality: Cardinality::Map,
            value,
        });
    }

    let type_word = attribute
        .split([',', ' '])
        .next()
        .context("empty attribute")?;
    let cardinality = if attribute.contains(" repeated") {
        Cardinality::Repeated
    } else {
        Cardinality::Single
    };
    let value = if type_word == "message" {
        ValueType::Message(resolve_type_path(module, innermost_type(&field.type_text))?)
    } else {
        ValueType::Scalar(scalar(type_word)?)
    };
    Ok(PbField {
        name: field.name.clone(),
        tag,
        cardinality,
        value,
    })
}

fn scalar(word: &str) -> anyhow::Result<Scalar> {
    Ok(match word {
        "string" => Scalar::String,
        "bytes" => Scalar::Bytes,
        "bool" => Scalar::Bool,
        "int32" => Scalar::Int32,
        "int64" => Scalar::Int64,
        "double" => Scalar::Double,
        other => bail!("unsupported protobuf type {other}"),
    })
}

/// `::core::option::Option<::prost::alloc::boxed::Box<JsonSchemaProps>>` →
/// `JsonSchemaProps`.
fn innermost_type(type_text: &str) -> &str {
    let start = type_text.rfind('<').map_or(0, |index| index + 1);
    type_text[start..].trim_end_matches(['>', ','])
}

/// The top-level generic arguments after `opener` (`BTreeMap<`), split on
/// commas outside nested `<...>`.
fn generic_arguments(type_text: &str, opener: &str) -> Option<Vec<String>> {
    let start = type_text.find(opener)? + opener.len();
    let mut depth = 0usize;
    let mut arguments = vec![String::new()];
    for character in type_text[start..].chars() {
        match character {
            '<' => depth += 1,
            '>' if depth == 0 => break,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                arguments.push(String::new());
                continue;
            }
            _ => {}
        }
        arguments.last_mut()?.push(character);
    }
    arguments.retain(|argument| !argument.is_empty());
    Some(arguments)
}

/// Resolves a Rust type path written inside `module` (`super::super::
/// apimachinery::pkg::apis::meta::v1::ObjectMeta`, or a bare `PodSpec`) to a
/// message full name.
fn resolve_type_path(module: &[String], path: &str) -> anyhow::Result<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let type_name = segments.pop().context("empty type path")?;
    let mut resolved: Vec<String> = module.to_vec();
    let mut rest = segments.as_slice();
    if rest.first() == Some(&"crate") {
        resolved.clear();
        rest = &rest[1..];
    }
    while rest.first() == Some(&"super") {
        if resolved.pop().is_none() {
            bail!("{path} climbs above the crate root");
        }
        rest = &rest[1..];
    }
    resolved.extend(rest.iter().map(|segment| segment.to_string()));
    Ok(format!("{}.{type_name}", package_of(&resolved)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_type_paths() {
        let module: Vec<String> = ["api", "core", "v1"].map(String::from).to_vec();
        assert_eq!(
            resolve_type_path(
                &module,
                "super::super::super::apimachinery::pkg::apis::meta::v1::ObjectMeta"
            )
            .unwrap(),
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(
            resolve_type_path(&module, "PodSpec").unwrap(),
            "io.k8s.api.core.v1.PodSpec"
        );
        assert_eq!(
            innermost_type("::core::option::Option<::prost::alloc::boxed::Box<JsonSchemaProps>>"),
            "JsonSchemaProps"
        );
        assert_eq!(
            generic_arguments(
                "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,super::Quantity,>",
                "BTreeMap<"
            )
            .unwrap(),
            vec!["::prost::alloc::string::String", "super::Quantity"]
        );
    }
}
