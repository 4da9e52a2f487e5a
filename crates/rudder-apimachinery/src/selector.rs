//! Label and field selectors with the semantics of Kubernetes'
//! `k8s.io/apimachinery/pkg/labels` and `pkg/fields`.
//!
//! - [`LabelSelector`] parses the `?labelSelector=` query syntax
//!   (`a=b,c!=d,e in (f,g),h notin (i),j,!k,n>5,m<3`) and the
//!   `metav1.LabelSelector` JSON form (`matchLabels` / `matchExpressions`),
//!   and matches label maps or whole objects.
//! - [`FieldSelector`] parses the `?fieldSelector=` query syntax
//!   (`metadata.name=foo,status.phase!=Running`) and matches field values
//!   supplied by the caller, who decides which fields a kind supports.
//!
//! Both render back to their canonical string form with `Display`, so
//! controllers can build query strings from parsed or constructed selectors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// Longest label value, and longest name part of a label key.
const MAX_LABEL_NAME_LENGTH: usize = 63;
/// Longest DNS-subdomain prefix of a label key.
const MAX_LABEL_PREFIX_LENGTH: usize = 253;

const QUALIFIED_NAME_MESSAGE: &str = "must consist of alphanumeric characters, '-', '_' or '.', \
     and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', \
     or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower \
     case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
     character (e.g. 'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of \
     alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
     character (e.g. 'MyValue', or 'my_value', or '12345', regex used for validation is \
     '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Why a label or field selector was rejected. The messages follow the
/// wording of Kubernetes' own errors, so clients see familiar text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement of a label selector string could not be parsed;
    /// Kubernetes prefixes every such error this way.
    #[error("unable to parse requirement: {0}")]
    Requirement(Box<SelectorError>),

    /// The label selector string had a token where another was expected.
    /// `found` is empty at the end of the string.
    #[error("found '{found}', expected: {expected}")]
    UnexpectedToken {
        found: String,
        expected: &'static str,
    },

    /// A label key is not a qualified name (optional DNS-subdomain prefix
    /// and '/', then a name of at most 63 characters).
    #[error("key: Invalid value: \"{key}\": {reason}")]
    InvalidLabelKey { key: String, reason: String },

    /// A label value is not empty and not a valid label value.
    #[error("values[{index}][{key}]: Invalid value: \"{value}\": {reason}")]
    InvalidLabelValue {
        key: String,
        index: usize,
        value: String,
        reason: String,
    },

    /// An operator was given the wrong number of values (for example
    /// `In` with none, or `Exists` with some).
    #[error("values: Invalid value: {values:?}: {reason}")]
    InvalidValueCount {
        key: String,
        operator: LabelOperator,
        values: Vec<String>,
        reason: &'static str,
    },

    /// A `Gt`/`Lt` requirement's value is not a base-10 64-bit integer.
    #[error(
        "values[{index}]: Invalid value: \"{value}\": for 'Gt', 'Lt' operators, \
         the value must be an integer"
    )]
    NonIntegerValue {
        key: String,
        index: usize,
        value: String,
    },

    /// A `matchExpressions` entry used an operator other than
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[error("\"{operator}\" is not a valid label selector operator")]
    InvalidSelectorOperator { operator: String },

    /// A `metav1.LabelSelector` JSON value has the wrong shape.
    #[error("invalid label selector: {reason}")]
    MalformedLabelSelector { reason: String },

    /// A field selector term has no `=`, `==` or `!=` operator.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidFieldTerm { selector: String, term: String },

    /// A field selector term uses an operator field selectors do not
    /// support (set-based and ordering operators are label-only).
    #[error(
        "invalid selector: '{selector}'; can't understand '{term}': operator '{operator}' \
         is not supported by field selectors, only '=', '==' and '!=' are"
    )]
    UnsupportedFieldOperator {
        selector: String,
        term: String,
        operator: String,
    },

    /// A field selector value has a backslash not followed by `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {sequence}")]
    InvalidEscapeSequence { sequence: String },

    /// A field selector value contains `,` or `=` without a backslash.
    #[error("invalid field selector: unescaped character in value: '{character}'")]
    UnescapedCharacter { character: char },
}

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

/// The operator of one label requirement (Kubernetes' `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelOperator {
    /// `key in (a,b)`: the label is present with one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `key=value`: the label is present with this value.
    Equals,
    /// `key==value`: same as [`LabelOperator::Equals`], kept for rendering.
    DoubleEquals,
    /// `key!=value`: the label is absent or has another value.
    NotEquals,
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
    /// `key>5`: the label is present and its integer value is greater.
    GreaterThan,
    /// `key<5`: the label is present and its integer value is smaller.
    LessThan,
}

impl LabelOperator {
    /// The operator's name as Kubernetes spells it in `selection.Operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelOperator::In => "in",
            LabelOperator::NotIn => "notin",
            LabelOperator::Equals => "=",
            LabelOperator::DoubleEquals => "==",
            LabelOperator::NotEquals => "!=",
            LabelOperator::Exists => "exists",
            LabelOperator::DoesNotExist => "!",
            LabelOperator::GreaterThan => "gt",
            LabelOperator::LessThan => "lt",
        }
    }
}

impl fmt::Display for LabelOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated requirement of a label selector, such as `tier in (a,b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    key: String,
    operator: LabelOperator,
    /// A set because Kubernetes deduplicates and sorts values; this also
    /// makes the rendered form canonical.
    values: BTreeSet<String>,
}

impl LabelRequirement {
    /// Builds a requirement, validating it as Kubernetes' `NewRequirement`
    /// does: the key must be a qualified name, `In`/`NotIn` need at least one
    /// value, `=`/`==`/`!=` exactly one, `Exists`/`DoesNotExist` none,
    /// `Gt`/`Lt` exactly one integer, and every value must be a valid label
    /// value.
    pub fn new(
        key: impl Into<String>,
        operator: LabelOperator,
        values: Vec<String>,
    ) -> Result<Self, SelectorError> {
        let key = key.into();
        validate_label_key(&key)?;

        let count_error = |reason: &'static str| SelectorError::InvalidValueCount {
            key: key.clone(),
            operator,
            values: values.clone(),
            reason,
        };
        match operator {
            LabelOperator::In | LabelOperator::NotIn if values.is_empty() => {
                return Err(count_error(
                    "for 'in', 'notin' operators, values set can't be empty",
                ));
            }
            LabelOperator::Equals | LabelOperator::DoubleEquals | LabelOperator::NotEquals
                if values.len() != 1 =>
            {
                return Err(count_error(
                    "exact-match compatibility requires one single value",
                ));
            }
            LabelOperator::Exists | LabelOperator::DoesNotExist if !values.is_empty() => {
                return Err(count_error(
                    "values set must be empty for exists and does not exist",
                ));
            }
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                if values.len() != 1 {
                    return Err(count_error(
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (index, value) in values.iter().enumerate() {
                    if value.parse::<i64>().is_err() {
                        return Err(SelectorError::NonIntegerValue {
                            key: key.clone(),
                            index,
                            value: value.clone(),
                        });
                    }
                }
            }
            _ => {}
        }

        for (index, value) in values.iter().enumerate() {
            validate_label_value(&key, index, value)?;
        }

        Ok(LabelRequirement {
            key,
            operator,
            values: values.into_iter().collect(),
        })
    }

    /// The label key this requirement tests.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The requirement's operator.
    pub fn operator(&self) -> LabelOperator {
        self.operator
    }

    /// The requirement's values, sorted and deduplicated (empty for
    /// `Exists`/`DoesNotExist`).
    pub fn values(&self) -> &BTreeSet<String> {
        &self.values
    }

    /// Whether a label value satisfies this requirement; `None` means the
    /// object has no label with this requirement's key.
    pub fn matches_value(&self, label_value: Option<&str>) -> bool {
        match self.operator {
            LabelOperator::In | LabelOperator::Equals | LabelOperator::DoubleEquals => {
                label_value.is_some_and(|value| self.values.contains(value))
            }
            // Kubernetes treats a missing label as "not one of these values".
            LabelOperator::NotIn | LabelOperator::NotEquals => {
                label_value.is_none_or(|value| !self.values.contains(value))
            }
            LabelOperator::Exists => label_value.is_some(),
            LabelOperator::DoesNotExist => label_value.is_none(),
            LabelOperator::GreaterThan | LabelOperator::LessThan => {
                // A missing label, or one that is not an integer, never
                // satisfies an ordering requirement.
                let Some(actual) = label_value.and_then(|value| value.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(bound) = self
                    .values
                    .iter()
                    .next()
                    .and_then(|value| value.parse::<i64>().ok())
                else {
                    return false;
                };
                if self.operator == LabelOperator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for LabelRequirement {
    /// Renders the requirement as Kubernetes' `Requirement.String()` does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == LabelOperator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let operator = match self.operator {
            LabelOperator::Exists | LabelOperator::DoesNotExist => return Ok(()),
            LabelOperator::Equals => "=",
            LabelOperator::DoubleEquals => "==",
            LabelOperator::NotEquals => "!=",
            LabelOperator::In => " in ",
            LabelOperator::NotIn => " notin ",
            LabelOperator::GreaterThan => ">",
            LabelOperator::LessThan => "<",
        };
        f.write_str(operator)?;
        let is_set = matches!(self.operator, LabelOperator::In | LabelOperator::NotIn);
        if is_set {
            f.write_str("(")?;
        }
        for (position, value) in self.values.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            f.write_str(value)?;
        }
        if is_set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: a conjunction of [`LabelRequirement`]s.
///
/// Two selectors have no requirements: [`LabelSelector::everything`] (the
/// empty string, or JSON `{}`) matches every object, while
/// [`LabelSelector::nothing`] (JSON `null`, i.e. an absent
/// `metav1.LabelSelector`) matches none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// Sorted by key (stably), as Kubernetes sorts them, so rendering is
    /// canonical.
    requirements: Vec<LabelRequirement>,
    /// Set only by [`LabelSelector::nothing`]; then `requirements` is empty.
    matches_nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object (the empty string).
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// The selector that matches no object, which Kubernetes uses for an
    /// absent (`null`) `metav1.LabelSelector`.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            matches_nothing: true,
        }
    }

    /// Parses the `?labelSelector=` syntax: comma-separated requirements
    /// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
    /// `k>5`, `k<5`, with any whitespace between tokens. An empty or
    /// all-whitespace string is [`LabelSelector::everything`].
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let requirements = LabelSelectorParser::new(selector).parse()?;
        Ok(LabelSelector::from_requirements(requirements))
    }

    /// Converts a `metav1.LabelSelector` JSON value, as Kubernetes'
    /// `LabelSelectorAsSelector` does:
    ///
    /// - `null` (an absent selector) gives [`LabelSelector::nothing`];
    /// - `{}`, or empty `matchLabels` and `matchExpressions`, gives
    ///   [`LabelSelector::everything`];
    /// - each `matchLabels` entry becomes `key=value`, and each
    ///   `matchExpressions` entry `{key, operator, values}` becomes a
    ///   requirement with operator `In`, `NotIn`, `Exists` or `DoesNotExist`.
    ///
    /// Callers reading an optional field should pass `Value::Null` when it
    /// is absent, e.g. `obj.pointer("/spec/selector").unwrap_or(&Value::Null)`.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let fields = match selector {
            Value::Null => return Ok(LabelSelector::nothing()),
            Value::Object(fields) => fields,
            other => {
                return Err(malformed(format!(
                    "expected an object, found {}",
                    json_type_name(other)
                )))
            }
        };

        let mut requirements = Vec::new();
        match fields.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(match_labels)) => {
                for (key, value) in match_labels {
                    let Some(value) = value.as_str() else {
                        return Err(malformed(format!(
                            "matchLabels[{key}]: expected a string, found {}",
                            json_type_name(value)
                        )));
                    };
                    requirements.push(LabelRequirement::new(
                        key.as_str(),
                        LabelOperator::Equals,
                        vec![value.to_owned()],
                    )?);
                }
            }
            Some(other) => {
                return Err(malformed(format!(
                    "matchLabels: expected an object, found {}",
                    json_type_name(other)
                )))
            }
        }

        match fields.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (index, expression) in expressions.iter().enumerate() {
                    requirements.push(match_expression_requirement(index, expression)?);
                }
            }
            Some(other) => {
                return Err(malformed(format!(
                    "matchExpressions: expected an array, found {}",
                    json_type_name(other)
                )))
            }
        }

        Ok(LabelSelector::from_requirements(requirements))
    }

    /// Builds a selector requiring every `key=value` of a label map, like
    /// Kubernetes' `SelectorFromSet` (used for e.g. a Service's
    /// `spec.selector`). An empty map gives [`LabelSelector::everything`].
    pub fn from_match_labels(labels: &BTreeMap<String, String>) -> Result<Self, SelectorError> {
        let requirements = labels
            .iter()
            .map(|(key, value)| {
                LabelRequirement::new(key.as_str(), LabelOperator::Equals, vec![value.clone()])
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LabelSelector::from_requirements(requirements))
    }

    /// Builds a selector from already validated requirements (no
    /// requirements gives [`LabelSelector::everything`]).
    pub fn from_requirements(mut requirements: Vec<LabelRequirement>) -> Self {
        requirements.sort_by(|left, right| left.key.cmp(&right.key));
        LabelSelector {
            requirements,
            matches_nothing: false,
        }
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[LabelRequirement] {
        &self.requirements
    }

    /// Whether this selector has no requirements and so matches everything
    /// (false for [`LabelSelector::nothing`], as in Kubernetes).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.matches_nothing
    }

    /// Whether this is [`LabelSelector::nothing`], which matches no object.
    pub fn matches_nothing(&self) -> bool {
        self.matches_nothing
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.matches_nothing
            && self.requirements.iter().all(|requirement| {
                requirement.matches_value(labels.get(&requirement.key).map(String::as_str))
            })
    }

    /// Whether an object's `metadata.labels` satisfy every requirement. A
    /// missing `metadata.labels` counts as no labels, and a label whose value
    /// is not a string counts as absent.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.matches_nothing {
            return false;
        }
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.requirements.iter().all(|requirement| {
            let value = labels
                .and_then(|labels| labels.get(&requirement.key))
                .and_then(Value::as_str);
            requirement.matches_value(value)
        })
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(selector: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(selector)
    }
}

impl fmt::Display for LabelSelector {
    /// Renders the canonical `labelSelector=` form: requirements sorted by
    /// key, values sorted, joined by commas.
    ///
    /// Both [`LabelSelector::everything`] and [`LabelSelector::nothing`]
    /// render as the empty string, as in Kubernetes; the empty string parses
    /// back to *everything*, so check [`LabelSelector::matches_nothing`]
    /// before sending a selector to a server.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, requirement) in self.requirements.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

fn malformed(reason: String) -> SelectorError {
    SelectorError::MalformedLabelSelector { reason }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts one `matchExpressions` entry into a requirement.
fn match_expression_requirement(
    index: usize,
    expression: &Value,
) -> Result<LabelRequirement, SelectorError> {
    let Some(fields) = expression.as_object() else {
        return Err(malformed(format!(
            "matchExpressions[{index}]: expected an object, found {}",
            json_type_name(expression)
        )));
    };
    let string_field = |name: &str| -> Result<String, SelectorError> {
        match fields.get(name) {
            // As when Go decodes JSON, a missing string is empty; validation
            // then reports it in Kubernetes' terms.
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(malformed(format!(
                "matchExpressions[{index}].{name}: expected a string, found {}",
                json_type_name(other)
            ))),
        }
    };
    let key = string_field("key")?;
    let operator_name = string_field("operator")?;
    let operator = match operator_name.as_str() {
        "In" => LabelOperator::In,
        "NotIn" => LabelOperator::NotIn,
        "Exists" => LabelOperator::Exists,
        "DoesNotExist" => LabelOperator::DoesNotExist,
        _ => {
            return Err(SelectorError::InvalidSelectorOperator {
                operator: operator_name,
            })
        }
    };
    let values = match fields.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(value_index, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    malformed(format!(
                        "matchExpressions[{index}].values[{value_index}]: expected a string, \
                         found {}",
                        json_type_name(item)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(malformed(format!(
                "matchExpressions[{index}].values: expected an array, found {}",
                json_type_name(other)
            )))
        }
    };
    LabelRequirement::new(key, operator, values)
}

/// Validates a label key as Kubernetes' `IsQualifiedName`.
fn validate_label_key(key: &str) -> Result<(), SelectorError> {
    let problems = qualified_name_problems(key);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SelectorError::InvalidLabelKey {
            key: key.to_owned(),
            reason: problems.join("; "),
        })
    }
}

fn qualified_name_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                problems.push("prefix part must be non-empty".to_owned());
            } else {
                problems.extend(
                    dns1123_subdomain_problems(prefix)
                        .into_iter()
                        .map(|problem| format!("prefix part {problem}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {QUALIFIED_NAME_MESSAGE} with an optional DNS subdomain \
                 prefix and '/' (e.g. 'example.com/MyName')"
            )]
        }
    };
    if name.is_empty() {
        problems.push("name part must be non-empty".to_owned());
    } else if name.len() > MAX_LABEL_NAME_LENGTH {
        problems.push(format!(
            "name part must be no more than {MAX_LABEL_NAME_LENGTH} characters"
        ));
    }
    if !is_qualified_name_part(name) {
        problems.push(format!("name part {QUALIFIED_NAME_MESSAGE}"));
    }
    problems
}

fn dns1123_subdomain_problems(subdomain: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if subdomain.len() > MAX_LABEL_PREFIX_LENGTH {
        problems.push(format!(
            "must be no more than {MAX_LABEL_PREFIX_LENGTH} characters"
        ));
    }
    if !subdomain.split('.').all(is_dns1123_label_shape) {
        problems.push(DNS1123_SUBDOMAIN_MESSAGE.to_owned());
    }
    problems
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` (subdomain labels have no length limit of
/// their own in Kubernetes' `IsDNS1123Subdomain`, only the total does).
fn is_dns1123_label_shape(label: &str) -> bool {
    let bytes = label.as_bytes();
    let is_end = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            is_end(first) && is_end(last) && bytes.iter().all(|byte| is_end(byte) || *byte == b'-')
        }
        _ => false,
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a key and
/// any non-empty label value.
fn is_qualified_name_part(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Validates a label value as Kubernetes' `IsValidLabelValue`.
fn validate_label_value(key: &str, index: usize, value: &str) -> Result<(), SelectorError> {
    let mut problems = Vec::new();
    if value.len() > MAX_LABEL_NAME_LENGTH {
        problems.push(format!(
            "must be no more than {MAX_LABEL_NAME_LENGTH} characters"
        ));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        problems.push(LABEL_VALUE_MESSAGE.to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SelectorError::InvalidLabelValue {
            key: key.to_owned(),
            index,
            value: value.to_owned(),
            reason: problems.join("; "),
        })
    }
}

// --- Label selector lexer and parser ---------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    EndOfString,
    OpenParenthesis,
    ClosedParenthesis,
    Comma,
    /// `!`
    DoesNotExist,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    /// The keyword `in`.
    In,
    /// The keyword `notin`.
    NotIn,
    Identifier,
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    literal: String,
}

impl Token {
    fn end_of_string() -> Self {
        Token {
            kind: TokenKind::EndOfString,
            literal: String::new(),
        }
    }
}

/// Where the parser is: `in`/`notin` are keywords only in operator position,
/// so that they can also be used as keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseContext {
    KeyAndOperator,
    Values,
}

fn is_selector_whitespace(character: char) -> bool {
    matches!(character, ' ' | '\t' | '\r' | '\n')
}

/// The token a special character starts on its own, or `None` if the
/// character is part of identifiers.
fn single_symbol_token(character: char) -> Option<TokenKind> {
    match character {
        '!' => Some(TokenKind::DoesNotExist),
        '=' => Some(TokenKind::Equals),
        '(' => Some(TokenKind::OpenParenthesis),
        ')' => Some(TokenKind::ClosedParenthesis),
        ',' => Some(TokenKind::Comma),
        '>' => Some(TokenKind::GreaterThan),
        '<' => Some(TokenKind::LessThan),
        _ => None,
    }
}

/// Splits a label selector into tokens. Symbols are matched longest first
/// (`!=` and `==` before `!` and `=`); identifiers run until whitespace or a
/// symbol.
fn lex_label_selector(input: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut characters = input.char_indices().peekable();
    while let Some(&(start, character)) = characters.peek() {
        if is_selector_whitespace(character) {
            characters.next();
            continue;
        }
        if let Some(single) = single_symbol_token(character) {
            characters.next();
            let next_is_equals = characters.peek().is_some_and(|&(_, next)| next == '=');
            let kind = match single {
                TokenKind::DoesNotExist if next_is_equals => TokenKind::NotEquals,
                TokenKind::Equals if next_is_equals => TokenKind::DoubleEquals,
                other => other,
            };
            let mut literal = character.to_string();
            if kind != single {
                characters.next();
                literal.push('=');
            }
            tokens.push(Token { kind, literal });
            continue;
        }
        let mut end = input.len();
        while let Some(&(position, next)) = characters.peek() {
            if is_selector_whitespace(next) || single_symbol_token(next).is_some() {
                end = position;
                break;
            }
            characters.next();
        }
        let word = &input[start..end];
        let kind = match word {
            "in" => TokenKind::In,
            "notin" => TokenKind::NotIn,
            _ => TokenKind::Identifier,
        };
        tokens.push(Token {
            kind,
            literal: word.to_owned(),
        });
    }
    tokens
}

fn unexpected(found: &Token, expected: &'static str) -> SelectorError {
    SelectorError::UnexpectedToken {
        found: found.literal.clone(),
        expected,
    }
}

/// A recursive-descent parser over the tokens of a label selector, following
/// the grammar (and error texts) of Kubernetes' `labels.Parse`.
struct LabelSelectorParser {
    tokens: Vec<Token>,
    position: usize,
}

impl LabelSelectorParser {
    fn new(input: &str) -> Self {
        LabelSelectorParser {
            tokens: lex_label_selector(input),
            position: 0,
        }
    }

    /// The next token without consuming it; past the end it is always
    /// the end-of-string token.
    fn lookahead(&self, context: ParseContext) -> Token {
        let mut token = self
            .tokens
            .get(self.position)
            .cloned()
            .unwrap_or_else(Token::end_of_string);
        if context == ParseContext::Values && matches!(token.kind, TokenKind::In | TokenKind::NotIn)
        {
            token.kind = TokenKind::Identifier;
        }
        token
    }

    fn consume(&mut self, context: ParseContext) -> Token {
        let token = self.lookahead(context);
        if self.position < self.tokens.len() {
            self.position += 1;
        }
        token
    }

    fn parse(mut self) -> Result<Vec<LabelRequirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let next = self.lookahead(ParseContext::Values);
            match next.kind {
                TokenKind::Identifier | TokenKind::DoesNotExist => {
                    let requirement = self
                        .parse_requirement()
                        .map_err(|error| SelectorError::Requirement(Box::new(error)))?;
                    requirements.push(requirement);
                    let separator = self.consume(ParseContext::Values);
                    match separator.kind {
                        TokenKind::EndOfString => return Ok(requirements),
                        TokenKind::Comma => {
                            let following = self.lookahead(ParseContext::Values);
                            if !matches!(
                                following.kind,
                                TokenKind::Identifier | TokenKind::DoesNotExist
                            ) {
                                return Err(unexpected(&following, "identifier after ','"));
                            }
                        }
                        _ => return Err(unexpected(&separator, "',' or 'end of string'")),
                    }
                }
                TokenKind::EndOfString => return Ok(requirements),
                _ => return Err(unexpected(&next, "!, identifier, or 'end of string'")),
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<LabelRequirement, SelectorError> {
        let (key, unary_operator) = self.parse_key_and_unary_operator()?;
        if let Some(operator) = unary_operator {
            return LabelRequirement::new(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            LabelOperator::In | LabelOperator::NotIn => self.parse_value_set()?,
            _ => vec![self.parse_exact_value()?],
        };
        LabelRequirement::new(key, operator, values)
    }

    /// Reads `key` or `!key`. Returns `DoesNotExist` for `!key`, `Exists`
    /// for a bare key followed by `,` or the end, and `None` when a binary
    /// operator should follow.
    fn parse_key_and_unary_operator(
        &mut self,
    ) -> Result<(String, Option<LabelOperator>), SelectorError> {
        let mut token = self.consume(ParseContext::Values);
        let mut operator = None;
        if token.kind == TokenKind::DoesNotExist {
            operator = Some(LabelOperator::DoesNotExist);
            token = self.consume(ParseContext::Values);
        }
        if token.kind != TokenKind::Identifier {
            return Err(unexpected(&token, "identifier"));
        }
        validate_label_key(&token.literal)?;
        let next = self.lookahead(ParseContext::Values);
        if operator.is_none() && matches!(next.kind, TokenKind::EndOfString | TokenKind::Comma) {
            operator = Some(LabelOperator::Exists);
        }
        Ok((token.literal, operator))
    }

    fn parse_operator(&mut self) -> Result<LabelOperator, SelectorError> {
        let token = self.consume(ParseContext::KeyAndOperator);
        match token.kind {
            TokenKind::In => Ok(LabelOperator::In),
            TokenKind::NotIn => Ok(LabelOperator::NotIn),
            TokenKind::Equals => Ok(LabelOperator::Equals),
            TokenKind::DoubleEquals => Ok(LabelOperator::DoubleEquals),
            TokenKind::NotEquals => Ok(LabelOperator::NotEquals),
            TokenKind::GreaterThan => Ok(LabelOperator::GreaterThan),
            TokenKind::LessThan => Ok(LabelOperator::LessThan),
            _ => Err(unexpected(
                &token,
                "'=', '!=', '==', 'in', 'notin', '>', '<'",
            )),
        }
    }

    /// Reads `(a,b,...)`. As in Kubernetes, empty entries are the empty
    /// value: `()` is `{""}` and `(a,)` is `{"", "a"}`.
    fn parse_value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        let open = self.consume(ParseContext::Values);
        if open.kind != TokenKind::OpenParenthesis {
            return Err(unexpected(&open, "'('"));
        }
        let next = self.lookahead(ParseContext::Values);
        match next.kind {
            TokenKind::Identifier | TokenKind::Comma => {
                let values = self.parse_value_list()?;
                let close = self.consume(ParseContext::Values);
                if close.kind != TokenKind::ClosedParenthesis {
                    return Err(unexpected(&close, "')'"));
                }
                Ok(values)
            }
            TokenKind::ClosedParenthesis => {
                self.consume(ParseContext::Values);
                Ok(vec![String::new()])
            }
            _ => Err(unexpected(&next, "',', ')' or identifier")),
        }
    }

    /// Reads the comma-separated values inside parentheses, stopping before
    /// the closing parenthesis.
    fn parse_value_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut values = Vec::new();
        loop {
            let token = self.consume(ParseContext::Values);
            match token.kind {
                TokenKind::Identifier => {
                    values.push(token.literal);
                    let next = self.lookahead(ParseContext::Values);
                    match next.kind {
                        TokenKind::Comma => continue,
                        TokenKind::ClosedParenthesis => return Ok(values),
                        _ => return Err(unexpected(&next, "',' or ')'")),
                    }
                }
                TokenKind::Comma => {
                    // A comma with nothing before it (`(,`), after it (`,)`)
                    // or another comma after it (`,,`) stands for "".
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    let next = self.lookahead(ParseContext::Values);
                    match next.kind {
                        TokenKind::ClosedParenthesis => {
                            values.push(String::new());
                            return Ok(values);
                        }
                        TokenKind::Comma => {
                            self.consume(ParseContext::Values);
                            values.push(String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(unexpected(&token, "',', or identifier")),
            }
        }
    }

    /// Reads the single value after `=`, `==`, `!=`, `>` or `<`; nothing
    /// before `,` or the end means the empty value (`key=`).
    fn parse_exact_value(&mut self) -> Result<String, SelectorError> {
        let next = self.lookahead(ParseContext::Values);
        if matches!(next.kind, TokenKind::EndOfString | TokenKind::Comma) {
            return Ok(String::new());
        }
        let token = self.consume(ParseContext::Values);
        if token.kind == TokenKind::Identifier {
            Ok(token.literal)
        } else {
            Err(unexpected(&token, "identifier"))
        }
    }
}

// ---------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------

/// The operator of a field requirement. `==` parses as `Equals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value` or `field==value`.
    Equals,
    /// `field!=value`.
    NotEquals,
}

impl FieldOperator {
    /// The operator as rendered in a field selector.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        }
    }
}

impl fmt::Display for FieldOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One term of a field selector, with its value unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `metadata.name`, exactly as written (Kubernetes
    /// does not trim it, so `" metadata.name"` is a different, unsupported
    /// field).
    pub field: String,
    pub operator: FieldOperator,
    /// The value with `\,`, `\=` and `\\` unescaped.
    pub value: String,
}

impl FieldRequirement {
    /// Whether a field value satisfies this requirement; a missing field
    /// compares as the empty string, as in Kubernetes.
    pub fn matches_value(&self, field_value: Option<&str>) -> bool {
        let actual = field_value.unwrap_or("");
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.field,
            self.operator,
            escape_field_value(&self.value)
        )
    }
}

/// A field selector: a conjunction of [`FieldRequirement`]s. The empty
/// selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// Sorted by the text of their terms, as Kubernetes sorts them.
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector that matches every object (the empty string).
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parses the `?fieldSelector=` syntax: terms separated by unescaped
    /// commas, each `field=value`, `field==value` or `field!=value`, split at
    /// the first operator. Values may escape `\,`, `\=` and `\\`; a bare `,`
    /// or `=` in a value, or any other escape, is an error. Empty terms are
    /// skipped, so `""` is [`FieldSelector::everything`]. Whitespace is not
    /// trimmed, as in Kubernetes.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut terms_and_requirements = Vec::new();
        for term in split_unescaped_commas(selector) {
            if term.is_empty() {
                continue;
            }
            let (field, operator, escaped_value) = split_field_term(selector, term)?;
            let value = unescape_field_value(escaped_value)?;
            terms_and_requirements.push((
                term,
                FieldRequirement {
                    field: field.to_owned(),
                    operator,
                    value,
                },
            ));
        }
        terms_and_requirements.sort_by(|left, right| left.0.cmp(right.0));
        Ok(FieldSelector {
            requirements: terms_and_requirements
                .into_iter()
                .map(|(_, requirement)| requirement)
                .collect(),
        })
    }

    /// The requirements, so the API server can check each field is
    /// supported by the kind being listed.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Whether this selector has no requirements and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value `field` must equal, if some requirement is `field=value`
    /// (like Kubernetes' `RequiresExactMatch`, used e.g. to index pods by
    /// `spec.nodeName`).
    pub fn exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|requirement| {
                requirement.field == field && requirement.operator == FieldOperator::Equals
            })
            .map(|requirement| requirement.value.as_str())
    }

    /// Whether every requirement holds, with `get` supplying each field's
    /// value (`None` for a missing field, which compares as "").
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| requirement.matches_value(get(&requirement.field).as_deref()))
    }

    /// Whether every requirement holds for an object, reading each field
    /// path with [`object_field`].
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(|field| object_field(object, field))
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(selector: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(selector)
    }
}

impl fmt::Display for FieldSelector {
    /// Renders the canonical `fieldSelector=` form, with values escaped and
    /// `==` rendered as `=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, requirement) in self.requirements.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// Resolves a dotted field path such as `metadata.name`, `spec.nodeName` or
/// `involvedObject.kind` in an object. Strings are returned as they are,
/// numbers and booleans in their JSON form; a missing field, `null`, or an
/// array or object gives `None`.
pub fn object_field(object: &Value, path: &str) -> Option<String> {
    let mut current = object;
    for segment in path.split('.') {
        current = current.as_object()?.get(segment)?;
    }
    match current {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Escapes a value for a field selector term: `\` as `\\`, `,` as `\,` and
/// `=` as `\=` (Kubernetes' `fields.EscapeValue`).
pub fn escape_field_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        if matches!(character, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// Splits a field selector at commas not preceded by a backslash.
fn split_unescaped_commas(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut term_start = 0;
    let mut after_backslash = false;
    for (position, character) in selector.char_indices() {
        if after_backslash {
            after_backslash = false;
        } else if character == '\\' {
            after_backslash = true;
        } else if character == ',' {
            terms.push(&selector[term_start..position]);
            term_start = position + 1;
        }
    }
    terms.push(&selector[term_start..]);
    terms
}

/// Operators field selectors reject, checked at each position after the
/// supported ones; longest first so `>=` is named rather than `>`.
const UNSUPPORTED_FIELD_SYMBOLS: [&str; 4] = [">=", "<=", ">", "<"];

/// Splits a term at its first operator into field, operator and the still
/// escaped value.
fn split_field_term<'term>(
    selector: &str,
    term: &'term str,
) -> Result<(&'term str, FieldOperator, &'term str), SelectorError> {
    let unsupported = |operator: &str| SelectorError::UnsupportedFieldOperator {
        selector: selector.to_owned(),
        term: term.to_owned(),
        operator: operator.to_owned(),
    };
    for (position, _) in term.char_indices() {
        let rest = &term[position..];
        let field = &term[..position];
        if let Some(value) = rest.strip_prefix("!=") {
            return Ok((field, FieldOperator::NotEquals, value));
        }
        if let Some(value) = rest.strip_prefix("==") {
            return Ok((field, FieldOperator::Equals, value));
        }
        if let Some(value) = rest.strip_prefix('=') {
            return Ok((field, FieldOperator::Equals, value));
        }
        // Field paths never contain '<' or '>', so these can only be meant
        // as label-style operators.
        if let Some(symbol) = UNSUPPORTED_FIELD_SYMBOLS
            .iter()
            .find(|symbol| rest.starts_with(**symbol))
        {
            return Err(unsupported(symbol));
        }
    }
    // No symbolic operator: name a set-based or existence operator if the
    // term looks like one, so the error says what is not supported.
    if let Some(word) = term
        .split(is_selector_whitespace)
        .find(|word| matches!(*word, "in" | "notin"))
    {
        return Err(unsupported(word));
    }
    if term.starts_with('!') {
        return Err(unsupported("!"));
    }
    Err(SelectorError::InvalidFieldTerm {
        selector: selector.to_owned(),
        term: term.to_owned(),
    })
}

/// Undoes [`escape_field_value`], rejecting unknown escapes and bare `,`
/// or `=` (Kubernetes' `fields.UnescapeValue`).
fn unescape_field_value(escaped: &str) -> Result<String, SelectorError> {
    let mut value = String::with_capacity(escaped.len());
    let mut after_backslash = false;
    for character in escaped.chars() {
        if after_backslash {
            if !matches!(character, '\\' | ',' | '=') {
                return Err(SelectorError::InvalidEscapeSequence {
                    sequence: format!("\\{character}"),
                });
            }
            value.push(character);
            after_backslash = false;
            continue;
        }
        match character {
            '\\' => after_backslash = true,
            ',' | '=' => return Err(SelectorError::UnescapedCharacter { character }),
            _ => value.push(character),
        }
    }
    if after_backslash {
        return Err(SelectorError::InvalidEscapeSequence {
            sequence: "\\".to_owned(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn parse(selector: &str) -> LabelSelector {
        match LabelSelector::parse(selector) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{selector:?} should parse: {error}"),
        }
    }

    fn parse_error(selector: &str) -> SelectorError {
        match LabelSelector::parse(selector) {
            Ok(parsed) => panic!("{selector:?} should not parse, got {parsed:?}"),
            Err(error) => error,
        }
    }

    fn field_selector(selector: &str) -> FieldSelector {
        match FieldSelector::parse(selector) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{selector:?} should parse: {error}"),
        }
    }

    fn field_error(selector: &str) -> SelectorError {
        match FieldSelector::parse(selector) {
            Ok(parsed) => panic!("{selector:?} should not parse, got {parsed:?}"),
            Err(error) => error,
        }
    }

    fn json_selector(value: Value) -> LabelSelector {
        match LabelSelector::from_json(&value) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{value} should convert: {error}"),
        }
    }

    fn json_error(value: Value) -> SelectorError {
        match LabelSelector::from_json(&value) {
            Ok(parsed) => panic!("{value} should not convert, got {parsed:?}"),
            Err(error) => error,
        }
    }

    /// The inner error of an `unable to parse requirement` error.
    fn requirement_cause(error: SelectorError) -> SelectorError {
        match error {
            SelectorError::Requirement(cause) => *cause,
            other => panic!("expected a requirement error, got {other:?}"),
        }
    }

    // --- label selector parsing and matching ------------------------------

    #[test]
    fn empty_label_selector_matches_everything() {
        for text in ["", "   ", "\t\n"] {
            let selector = parse(text);
            assert!(selector.is_empty());
            assert!(!selector.matches_nothing());
            assert!(selector.matches(&labels(&[])));
            assert!(selector.matches(&labels(&[("a", "b")])));
            assert_eq!(selector.to_string(), "");
        }
        assert_eq!(LabelSelector::everything(), parse(""));
    }

    #[test]
    fn equality_operators() {
        for text in ["app=web", "app==web", " app = web "] {
            let selector = parse(text);
            assert!(selector.matches(&labels(&[("app", "web")])), "{text}");
            assert!(
                selector.matches(&labels(&[("app", "web"), ("x", "y")])),
                "{text}"
            );
            assert!(!selector.matches(&labels(&[("app", "db")])), "{text}");
            assert!(!selector.matches(&labels(&[])), "{text}");
        }
        assert_eq!(
            parse("app==web").requirements()[0].operator(),
            LabelOperator::DoubleEquals
        );
    }

    #[test]
    fn not_equals_matches_missing_key() {
        let selector = parse("app!=web");
        assert!(!selector.matches(&labels(&[("app", "web")])));
        assert!(selector.matches(&labels(&[("app", "db")])));
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("other", "web")])));
    }

    #[test]
    fn set_operators() {
        let selector = parse("env in (prod, staging)");
        assert!(selector.matches(&labels(&[("env", "prod")])));
        assert!(selector.matches(&labels(&[("env", "staging")])));
        assert!(!selector.matches(&labels(&[("env", "dev")])));
        assert!(!selector.matches(&labels(&[])));

        let selector = parse("env notin (prod,staging)");
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        assert!(selector.matches(&labels(&[("env", "dev")])));
        // notin matches objects without the label at all.
        assert!(selector.matches(&labels(&[])));
    }

    #[test]
    fn existence_operators() {
        let selector = parse("app");
        assert_eq!(selector.requirements()[0].operator(), LabelOperator::Exists);
        assert!(selector.matches(&labels(&[("app", "")])));
        assert!(!selector.matches(&labels(&[("other", "x")])));

        let selector = parse("!app");
        assert_eq!(
            selector.requirements()[0].operator(),
            LabelOperator::DoesNotExist
        );
        assert!(!selector.matches(&labels(&[("app", "x")])));
        assert!(selector.matches(&labels(&[("other", "x")])));

        let selector = parse(" ! app , tier ");
        assert!(selector.matches(&labels(&[("tier", "x")])));
        assert!(!selector.matches(&labels(&[("tier", "x"), ("app", "y")])));
    }

    #[test]
    fn ordering_operators() {
        let greater = parse("replicas>5");
        assert_eq!(
            greater.requirements()[0].operator(),
            LabelOperator::GreaterThan
        );
        assert!(greater.matches(&labels(&[("replicas", "6")])));
        assert!(!greater.matches(&labels(&[("replicas", "5")])));
        assert!(!greater.matches(&labels(&[("replicas", "-7")])));
        // Missing or non-integer labels never satisfy an ordering.
        assert!(!greater.matches(&labels(&[])));
        assert!(!greater.matches(&labels(&[("replicas", "many")])));

        let less = parse("replicas < 5");
        assert!(less.matches(&labels(&[("replicas", "4")])));
        assert!(less.matches(&labels(&[("replicas", "-4")])));
        assert!(!less.matches(&labels(&[("replicas", "5")])));
        assert!(!less.matches(&labels(&[])));
    }

    #[test]
    fn ordering_operators_require_integer_values() {
        let cause = requirement_cause(parse_error("replicas>five"));
        assert!(
            matches!(&cause, SelectorError::NonIntegerValue { value, .. } if value == "five"),
            "{cause:?}"
        );
        assert_eq!(
            LabelSelector::parse("replicas>five")
                .map_err(|error| error.to_string())
                .err()
                .as_deref(),
            Some(
                "unable to parse requirement: values[0]: Invalid value: \"five\": \
                 for 'Gt', 'Lt' operators, the value must be an integer"
            )
        );
        // `k>` has an empty value, which is not an integer either.
        assert!(matches!(
            requirement_cause(parse_error("replicas>")),
            SelectorError::NonIntegerValue { .. }
        ));
    }

    #[test]
    fn several_requirements_are_all_required() {
        let selector = parse("app=web,tier in (front,back),!legacy,env!=dev");
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "mid")])));
        assert!(!selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "back"),
            ("legacy", "true")
        ])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back"), ("env", "dev")])));
        assert_eq!(selector.requirements().len(), 4);
    }

    #[test]
    fn keywords_can_be_keys_and_values() {
        let selector = parse("in=notin");
        assert!(selector.matches(&labels(&[("in", "notin")])));
        let selector = parse("notin in (in,notin)");
        assert!(selector.matches(&labels(&[("notin", "in")])));
        assert!(!selector.matches(&labels(&[("notin", "x")])));
    }

    #[test]
    fn empty_values() {
        let selector = parse("app=");
        assert!(selector.matches(&labels(&[("app", "")])));
        assert!(!selector.matches(&labels(&[("app", "x")])));
        assert!(!selector.matches(&labels(&[])));

        let selector = parse("app in ()");
        assert_eq!(
            selector.requirements()[0].values(),
            &BTreeSet::from([String::new()])
        );
        assert!(selector.matches(&labels(&[("app", "")])));

        let selector = parse("app in (a,)");
        assert_eq!(
            selector.requirements()[0].values(),
            &BTreeSet::from([String::new(), "a".to_owned()])
        );
        let selector = parse("app in (,a,,b)");
        assert_eq!(
            selector.requirements()[0].values(),
            &BTreeSet::from([String::new(), "a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn prefixed_keys() {
        let selector = parse("app.kubernetes.io/name=web,example.com/x-y_z.1 in (a)");
        assert!(selector.matches(&labels(&[
            ("app.kubernetes.io/name", "web"),
            ("example.com/x-y_z.1", "a")
        ])));
    }

    #[test]
    fn syntax_errors() {
        let cases: &[(&str, &str)] = &[
            ("app=web,", "found '', expected: identifier after ','"),
            ("app=web,,x", "found ',', expected: identifier after ','"),
            (
                ",app",
                "found ',', expected: !, identifier, or 'end of string'",
            ),
            (
                "(app)",
                "found '(', expected: !, identifier, or 'end of string'",
            ),
            ("app=web x", "found 'x', expected: ',' or 'end of string'"),
            ("!app=web", "found '=', expected: ',' or 'end of string'"),
            (
                "app web",
                "unable to parse requirement: found 'web', expected: '=', '!=', '==', 'in', 'notin', '>', '<'",
            ),
            (
                "app in web",
                "unable to parse requirement: found 'web', expected: '('",
            ),
            (
                "app in (a",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            (
                "app in (a b)",
                "unable to parse requirement: found 'b', expected: ',' or ')'",
            ),
            (
                "app in (=)",
                "unable to parse requirement: found '=', expected: ',', ')' or identifier",
            ),
            (
                "app in (a,=)",
                "unable to parse requirement: found '=', expected: ',', or identifier",
            ),
            (
                "app=(x)",
                "unable to parse requirement: found '(', expected: identifier",
            ),
            (
                "!",
                "unable to parse requirement: found '', expected: identifier",
            ),
            (
                "app=!",
                "unable to parse requirement: found '!', expected: identifier",
            ),
            (
                "app >= 5",
                "unable to parse requirement: found '=', expected: identifier",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(parse_error(text).to_string(), *message, "selector {text:?}");
        }
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let long_name = "a".repeat(64);
        let long_prefix = format!("{}/a", "a".repeat(254));
        let cases: Vec<(String, &str)> = vec![
            ("-app=x".to_owned(), "name part must consist of"),
            ("app-=x".to_owned(), "name part must consist of"),
            (
                format!("{long_name}=x"),
                "name part must be no more than 63 characters",
            ),
            ("/app=x".to_owned(), "prefix part must be non-empty"),
            (
                "Example.com/app=x".to_owned(),
                "prefix part a lowercase RFC 1123 subdomain",
            ),
            (
                "example..com/app=x".to_owned(),
                "prefix part a lowercase RFC 1123 subdomain",
            ),
            (
                format!("{long_prefix}=x"),
                "prefix part must be no more than 253 characters",
            ),
            ("example.com/=x".to_owned(), "name part must be non-empty"),
            ("a/b/c=x".to_owned(), "a qualified name must consist of"),
            ("app\u{e9}=x".to_owned(), "name part must consist of"),
        ];
        for (text, reason_start) in cases {
            match requirement_cause(parse_error(&text)) {
                SelectorError::InvalidLabelKey { reason, .. } => {
                    assert!(reason.starts_with(reason_start), "{text:?}: {reason}")
                }
                other => panic!("{text:?}: expected an invalid key, got {other:?}"),
            }
        }
        // Keys at the limits are fine.
        let longest_name = "a".repeat(63);
        assert!(LabelSelector::parse(&format!("{longest_name}=x")).is_ok());
        let longest_prefix = format!("{}/a", "a".repeat(253));
        assert!(LabelSelector::parse(&format!("{longest_prefix}=x")).is_ok());

        let message = parse_error("-app").to_string();
        assert!(
            message.starts_with(
                "unable to parse requirement: key: Invalid value: \"-app\": name part must \
                 consist of alphanumeric characters"
            ),
            "{message}"
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        let long_value = "v".repeat(64);
        for value in ["-web", "web-", "we b!", long_value.as_str(), "a/b"] {
            let text = format!("app in (ok,{value})");
            let result = LabelSelector::parse(&text);
            assert!(result.is_err(), "{text:?} should be rejected");
        }
        match requirement_cause(parse_error("app=-web")) {
            SelectorError::InvalidLabelValue {
                key, index, value, ..
            } => {
                assert_eq!((key.as_str(), index, value.as_str()), ("app", 0, "-web"));
            }
            other => panic!("expected an invalid value, got {other:?}"),
        }
        let message = parse_error(&format!("app={long_value}")).to_string();
        assert!(
            message.starts_with(&format!(
                "unable to parse requirement: values[0][app]: Invalid value: \"{long_value}\": \
                 must be no more than 63 characters"
            )),
            "{message}"
        );
        assert!(LabelSelector::parse(&format!("app={}", "v".repeat(63))).is_ok());
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("x=a", "x=a"),
            (" x == a ", "x==a"),
            ("x != a", "x!=a"),
            ("x in (c, a, b, a)", "x in (a,b,c)"),
            ("x notin (b,a)", "x notin (a,b)"),
            ("x", "x"),
            ("! x", "!x"),
            ("x > 5", "x>5"),
            ("x<5", "x<5"),
            ("x=", "x="),
            ("x in ()", "x in ()"),
            ("x in (a,)", "x in (,a)"),
            ("z=1,a=2,m", "a=2,m,z=1"),
            ("in=notin", "in=notin"),
        ];
        for (input, rendered) in cases {
            let selector = parse(input);
            assert_eq!(selector.to_string(), *rendered, "rendering {input:?}");
            assert_eq!(parse(rendered), selector, "re-parsing {rendered:?}");
        }
    }

    #[test]
    fn from_str_matches_parse() {
        let parsed: LabelSelector = match "a=b,!c".parse() {
            Ok(parsed) => parsed,
            Err(error) => panic!("should parse: {error}"),
        };
        assert_eq!(parsed, parse("a=b,!c"));
        assert!("a=-".parse::<LabelSelector>().is_err());
    }

    #[test]
    fn matches_object_reads_metadata_labels() {
        let selector = parse("app=web,env notin (dev)");
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web", "env": "prod"}}});
        assert!(selector.matches_object(&pod));
        let dev = json!({"metadata": {"labels": {"app": "web", "env": "dev"}}});
        assert!(!selector.matches_object(&dev));
        let unlabeled = json!({"metadata": {"name": "p"}});
        assert!(!selector.matches_object(&unlabeled));
        assert!(parse("!app").matches_object(&unlabeled));
        assert!(parse("").matches_object(&json!("not even an object")));
        // A non-string label value counts as absent.
        let odd = json!({"metadata": {"labels": {"app": 5}}});
        assert!(!parse("app").matches_object(&odd));
        assert!(parse("app!=5").matches_object(&odd));
    }

    #[test]
    fn requirement_constructor_validates_value_counts() {
        let count_reason = |result: Result<LabelRequirement, SelectorError>| match result {
            Err(SelectorError::InvalidValueCount { reason, .. }) => reason,
            other => panic!("expected a value count error, got {other:?}"),
        };
        assert_eq!(
            count_reason(LabelRequirement::new("a", LabelOperator::In, vec![])),
            "for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            count_reason(LabelRequirement::new(
                "a",
                LabelOperator::Equals,
                vec!["x".into(), "y".into()]
            )),
            "exact-match compatibility requires one single value"
        );
        assert_eq!(
            count_reason(LabelRequirement::new(
                "a",
                LabelOperator::Exists,
                vec!["x".into()]
            )),
            "values set must be empty for exists and does not exist"
        );
        assert_eq!(
            count_reason(LabelRequirement::new("a", LabelOperator::LessThan, vec![])),
            "for 'Gt', 'Lt' operators, exactly one value is required"
        );
        let requirement = LabelRequirement::new(
            "b",
            LabelOperator::NotIn,
            vec!["y".into(), "x".into(), "y".into()],
        );
        let selector = match requirement {
            Ok(requirement) => LabelSelector::from_requirements(vec![requirement]),
            Err(error) => panic!("should be valid: {error}"),
        };
        assert_eq!(selector.to_string(), "b notin (x,y)");
    }

    #[test]
    fn from_match_labels_builds_equality_requirements() {
        let selector = match LabelSelector::from_match_labels(&labels(&[("b", "2"), ("a", "1")])) {
            Ok(selector) => selector,
            Err(error) => panic!("should be valid: {error}"),
        };
        assert_eq!(selector.to_string(), "a=1,b=2");
        assert!(selector.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "3")])));
        assert!(!selector.matches(&labels(&[("a", "1")])));
        assert!(LabelSelector::from_match_labels(&labels(&[]))
            .is_ok_and(|selector| selector.is_empty()));
        assert!(LabelSelector::from_match_labels(&labels(&[("-a", "1")])).is_err());
    }

    // --- metav1.LabelSelector JSON ----------------------------------------

    #[test]
    fn null_json_selector_matches_nothing() {
        let selector = json_selector(Value::Null);
        assert!(selector.matches_nothing());
        assert!(!selector.is_empty());
        assert!(!selector.matches(&labels(&[])));
        assert!(!selector.matches(&labels(&[("a", "b")])));
        assert!(!selector.matches_object(&json!({"metadata": {"labels": {"a": "b"}}})));
        assert_eq!(selector, LabelSelector::nothing());
    }

    #[test]
    fn empty_json_selector_matches_everything() {
        for value in [
            json!({}),
            json!({"matchLabels": {}}),
            json!({"matchLabels": null, "matchExpressions": []}),
        ] {
            let selector = json_selector(value);
            assert!(selector.is_empty());
            assert!(selector.matches(&labels(&[])));
            assert!(selector.matches(&labels(&[("a", "b")])));
        }
    }

    #[test]
    fn json_selector_with_labels_and_expressions() {
        let selector = json_selector(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "owner", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist", "values": []},
            ],
        }));
        assert_eq!(
            selector.to_string(),
            "app=web,env notin (dev),!legacy,owner,tier in (back,front)"
        );
        assert!(selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("owner", "me")
        ])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("owner", "me"),
            ("env", "dev")
        ])));
        // The rendered form parses to the same selector.
        assert_eq!(parse(&selector.to_string()), selector);
    }

    #[test]
    fn json_selector_validation() {
        assert!(matches!(
            json_error(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})),
            SelectorError::InvalidValueCount {
                operator: LabelOperator::In,
                ..
            }
        ));
        assert!(matches!(
            json_error(json!({"matchExpressions": [{"key": "a", "operator": "NotIn"}]})),
            SelectorError::InvalidValueCount {
                operator: LabelOperator::NotIn,
                ..
            }
        ));
        assert!(matches!(
            json_error(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            SelectorError::InvalidValueCount {
                operator: LabelOperator::Exists,
                ..
            }
        ));
        assert!(matches!(
            json_error(
                json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]})
            ),
            SelectorError::InvalidValueCount {
                operator: LabelOperator::DoesNotExist,
                ..
            }
        ));
        let error = json_error(
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        );
        assert_eq!(
            error.to_string(),
            "\"Gt\" is not a valid label selector operator"
        );
        assert!(matches!(
            json_error(json!({"matchLabels": {"a": "-b"}})),
            SelectorError::InvalidLabelValue { .. }
        ));
        assert!(matches!(
            json_error(json!({"matchLabels": {"a b": "c"}})),
            SelectorError::InvalidLabelKey { .. }
        ));
        // A missing key is the empty key, which is not a valid name.
        assert!(matches!(
            json_error(json!({"matchExpressions": [{"operator": "Exists"}]})),
            SelectorError::InvalidLabelKey { .. }
        ));
        for malformed in [
            json!("app=web"),
            json!({"matchLabels": []}),
            json!({"matchLabels": {"a": 1}}),
            json!({"matchExpressions": {}}),
            json!({"matchExpressions": ["a"]}),
            json!({"matchExpressions": [{"key": 1, "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}),
        ] {
            assert!(
                matches!(
                    LabelSelector::from_json(&malformed),
                    Err(SelectorError::MalformedLabelSelector { .. })
                ),
                "{malformed}"
            );
        }
    }

    // --- field selectors ----------------------------------------------------

    #[test]
    fn empty_field_selector_matches_everything() {
        for text in ["", ",", ",,"] {
            let selector = field_selector(text);
            assert!(selector.is_empty());
            assert!(selector.matches(|_| None));
            assert_eq!(selector.to_string(), "");
        }
    }

    #[test]
    fn field_equality_operators() {
        for text in ["metadata.name=web", "metadata.name==web"] {
            let selector = field_selector(text);
            assert_eq!(
                selector.requirements(),
                &[FieldRequirement {
                    field: "metadata.name".to_owned(),
                    operator: FieldOperator::Equals,
                    value: "web".to_owned(),
                }]
            );
            assert!(selector.matches(|field| (field == "metadata.name").then(|| "web".to_owned())));
            assert!(!selector.matches(|_| Some("db".to_owned())));
            assert!(!selector.matches(|_| None));
        }

        let selector = field_selector("status.phase!=Running");
        assert_eq!(
            selector.requirements()[0].operator,
            FieldOperator::NotEquals
        );
        assert!(!selector.matches(|_| Some("Running".to_owned())));
        assert!(selector.matches(|_| Some("Pending".to_owned())));
        assert!(selector.matches(|_| None));
    }

    #[test]
    fn missing_field_compares_as_empty_string() {
        assert!(field_selector("spec.nodeName=").matches(|_| None));
        assert!(!field_selector("spec.nodeName!=").matches(|_| None));
        assert!(field_selector("spec.nodeName!=").matches(|_| Some("node-1".to_owned())));
    }

    #[test]
    fn field_selector_with_several_terms() {
        let selector = field_selector("status.phase!=Failed,spec.nodeName=node-1");
        let requirements: Vec<(&str, FieldOperator, &str)> = selector
            .requirements()
            .iter()
            .map(|requirement| {
                (
                    requirement.field.as_str(),
                    requirement.operator,
                    requirement.value.as_str(),
                )
            })
            .collect();
        // Sorted by term text, as Kubernetes does.
        assert_eq!(
            requirements,
            vec![
                ("spec.nodeName", FieldOperator::Equals, "node-1"),
                ("status.phase", FieldOperator::NotEquals, "Failed"),
            ]
        );
        let pod = |node: &str, phase: &str| json!({"spec": {"nodeName": node}, "status": {"phase": phase}});
        assert!(selector.matches_object(&pod("node-1", "Running")));
        assert!(!selector.matches_object(&pod("node-1", "Failed")));
        assert!(!selector.matches_object(&pod("node-2", "Running")));
        assert_eq!(selector.exact_match("spec.nodeName"), Some("node-1"));
        assert_eq!(selector.exact_match("status.phase"), None);
        assert_eq!(selector.exact_match("metadata.name"), None);
    }

    #[test]
    fn field_terms_split_at_first_operator() {
        let selector = field_selector("a!=b\\=c");
        assert_eq!(selector.requirements()[0].field, "a");
        assert_eq!(selector.requirements()[0].value, "b=c");
        // `==` is found before `=` at the same position.
        assert_eq!(field_selector("a==b").requirements()[0].value, "b");
        // `===` leaves a bare `=` in the value.
        assert_eq!(
            field_error("a===b"),
            SelectorError::UnescapedCharacter { character: '=' }
        );
        // Whitespace is significant, as in Kubernetes.
        assert_eq!(field_selector("a = b").requirements()[0].field, "a ");
        assert_eq!(field_selector("a = b").requirements()[0].value, " b");
    }

    #[test]
    fn field_value_escapes() {
        let selector = field_selector(r"metadata.name=a\,b\=c\\d,spec.x=y");
        assert_eq!(selector.requirements().len(), 2);
        assert_eq!(selector.requirements()[0].field, "metadata.name");
        assert_eq!(selector.requirements()[0].value, r"a,b=c\d");
        assert_eq!(selector.to_string(), r"metadata.name=a\,b\=c\\d,spec.x=y");
        assert_eq!(field_selector(&selector.to_string()), selector);

        assert_eq!(
            field_error(r"a=b\c"),
            SelectorError::InvalidEscapeSequence {
                sequence: r"\c".to_owned()
            }
        );
        assert_eq!(
            field_error(r"a=b\"),
            SelectorError::InvalidEscapeSequence {
                sequence: r"\".to_owned()
            }
        );
        assert_eq!(
            field_error("a=b=c"),
            SelectorError::UnescapedCharacter { character: '=' }
        );
        assert_eq!(
            field_error(r"a=b\c").to_string(),
            r"invalid field selector: invalid escape sequence: \c"
        );
        assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
        assert_eq!(
            unescape_field_value(&escape_field_value(r"x\,=\\"))
                .ok()
                .as_deref(),
            Some(r"x\,=\\")
        );
    }

    #[test]
    fn field_selector_display_is_canonical() {
        let selector = field_selector("z==1,a!=2,m=");
        assert_eq!(selector.to_string(), "a!=2,m=,z=1");
        assert_eq!(field_selector(&selector.to_string()), selector);
        let parsed: FieldSelector = match "b=1,a=2".parse() {
            Ok(parsed) => parsed,
            Err(error) => panic!("should parse: {error}"),
        };
        assert_eq!(parsed.to_string(), "a=2,b=1");
    }

    #[test]
    fn unsupported_field_operators_are_named() {
        let cases: &[(&str, &str)] = &[
            ("spec.replicas>5", ">"),
            ("spec.replicas<5", "<"),
            ("spec.replicas>=5", ">="),
            ("spec.replicas<=5", "<="),
            ("status.phase in (Running)", "in"),
            ("status.phase notin (Running)", "notin"),
            ("!spec.nodeName", "!"),
        ];
        for (text, expected_operator) in cases {
            match field_error(text) {
                SelectorError::UnsupportedFieldOperator { operator, .. } => {
                    assert_eq!(operator, *expected_operator, "{text}")
                }
                other => panic!("{text}: expected an unsupported operator, got {other:?}"),
            }
        }
        let message = field_error("a>5").to_string();
        assert_eq!(
            message,
            "invalid selector: 'a>5'; can't understand 'a>5': operator '>' is not supported \
             by field selectors, only '=', '==' and '!=' are"
        );
        assert_eq!(
            field_error("a=1,spec.nodeName"),
            SelectorError::InvalidFieldTerm {
                selector: "a=1,spec.nodeName".to_owned(),
                term: "spec.nodeName".to_owned(),
            }
        );
        assert_eq!(
            field_error("spec.nodeName").to_string(),
            "invalid selector: 'spec.nodeName'; can't understand 'spec.nodeName'"
        );
    }

    #[test]
    fn object_field_resolves_dotted_paths() {
        let event = json!({
            "metadata": {"name": "e1", "generation": 3},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "spec": {"unschedulable": true, "nodeName": null, "list": [1]},
        });
        assert_eq!(object_field(&event, "metadata.name").as_deref(), Some("e1"));
        assert_eq!(
            object_field(&event, "involvedObject.kind").as_deref(),
            Some("Pod")
        );
        assert_eq!(
            object_field(&event, "metadata.generation").as_deref(),
            Some("3")
        );
        assert_eq!(
            object_field(&event, "spec.unschedulable").as_deref(),
            Some("true")
        );
        assert_eq!(object_field(&event, "spec.nodeName"), None);
        assert_eq!(object_field(&event, "spec.list"), None);
        assert_eq!(object_field(&event, "metadata"), None);
        assert_eq!(object_field(&event, "status.phase"), None);
        assert_eq!(object_field(&event, "metadata.name.extra"), None);
        assert_eq!(object_field(&event, ""), None);

        assert!(field_selector("spec.unschedulable=true").matches_object(&event));
        assert!(field_selector("spec.nodeName=").matches_object(&event));
        assert!(field_selector("involvedObject.kind=Pod,metadata.name!=e2").matches_object(&event));
    }
}
