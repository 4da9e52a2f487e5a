//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) decoding into
//! the JSON form Kubernetes' Go types marshal to.
//!
//! client-go's typed clients (and so `kubectl create namespace|configmap|
//! secret|deployment|job|cronjob|service ...`) send built-in types as protobuf
//! and never fall back to JSON (`kubectl run`, `apply` and `edit` send JSON);
//! Rudder works on JSON, so request bodies are converted here, before anything
//! else sees them. A body is the magic `k8s\0` followed by a `runtime.Unknown` envelope
//! whose `raw` bytes are the object's message; the envelope's type meta names
//! the message.
//!
//! Messages are described by a generated table (`protobuf_schema.rs`, from
//! `cargo run -p xtask -- gen-protobuf-schema`): per field its number, JSON
//! name and type. The result matches what Go's `encoding/json` would print for
//! the same Go object:
//!
//! - a field absent from the bytes is absent from the JSON; so are empty
//!   repeated and map fields;
//! - a scalar at its zero value (`""`, `0`, `false`) is dropped unless the
//!   field is required (no `omitempty` in Go) or a Go pointer: Go writes every
//!   non-pointer scalar to protobuf, zero or not, and drops zero `omitempty`
//!   ones from JSON, but keeps a set pointer to zero (`replicas: 0`);
//! - a present message is kept even when empty (`"spec": {}`), as Go prints a
//!   non-pointer struct;
//! - `metav1.Time` is RFC 3339 (`null` for the zero time), `MicroTime` has six
//!   fractional digits, `Duration` is Go's duration string, `Quantity` its
//!   string, `IntOrString` a number or string, `RawExtension`/`FieldsV1`/
//!   apiextensions `JSON` the embedded JSON value, `bytes` base64, and
//!   structs Go embeds with `json:",inline"` are merged into their parent.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

#[rustfmt::skip]
#[path = "protobuf_schema.rs"]
mod schema;

/// The media type of Kubernetes protobuf bodies.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every Kubernetes protobuf body starts with these four bytes.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Messages nest this deep at most (an embedded `RawExtension` object counts
/// as its own nesting). Real objects stay far below; the limit keeps hostile
/// input from exhausting the stack.
const MAX_DEPTH: usize = 100;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtobufError {
    #[error("body does not start with the Kubernetes protobuf magic number \"k8s\\0\"")]
    MissingMagic,
    #[error("protobuf envelope names no kind")]
    MissingKind,
    #[error("no protobuf schema for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("protobuf envelope content encoding {0:?} is not supported")]
    UnsupportedContentEncoding(String),
    #[error("protobuf envelope content type {0:?} is not supported")]
    UnsupportedContentType(String),
    #[error("malformed protobuf: data ends inside {0}")]
    Truncated(&'static str),
    #[error("malformed protobuf: varint longer than 64 bits")]
    VarintOverflow,
    #[error("malformed protobuf: invalid field number {0}")]
    InvalidFieldNumber(u64),
    #[error("malformed protobuf: unsupported wire type {0}")]
    UnsupportedWireType(u8),
    #[error(
        "malformed protobuf: field {field} of {message} has wire type {found}, expected {expected}"
    )]
    WrongWireType {
        message: &'static str,
        field: u32,
        expected: u8,
        found: u8,
    },
    #[error("{message}: embedded value is neither JSON nor Kubernetes protobuf: {reason}")]
    InvalidEmbeddedJson {
        message: &'static str,
        reason: String,
    },
    #[error("IntOrString has type {0}; only 0 (int) and 1 (string) exist")]
    InvalidIntOrStringType(i64),
    #[error("timestamp {seconds}s {nanos}ns is outside the years 0 to 9999")]
    TimestampOutOfRange { seconds: i64, nanos: i64 },
    #[error("field {field} of {message} is {value}, which JSON cannot represent")]
    NonFiniteDouble {
        message: &'static str,
        field: u32,
        value: f64,
    },
    #[error("protobuf messages nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Whether a request's `Content-Type` is a Kubernetes protobuf body that
/// [`decode`] accepts. Parameters are ignored, except that `stream=watch`
/// (length-framed watch events, never a request body) is not accepted.
pub fn is_protobuf_content_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE)
        && parts.all(|parameter| {
            let (name, _) = parameter.split_once('=').unwrap_or((parameter, ""));
            !name.trim().eq_ignore_ascii_case("stream")
        })
}

/// Decodes a Kubernetes protobuf body (magic, `runtime.Unknown` envelope,
/// object message) into the object's Kubernetes JSON form, with `apiVersion`
/// and `kind` set from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    decode_body(body, 0)
}

fn decode_body(body: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::MissingMagic)?;
    let envelope = Envelope::parse(payload)?;
    if !envelope.content_encoding.is_empty() {
        return Err(ProtobufError::UnsupportedContentEncoding(
            envelope.content_encoding,
        ));
    }
    if envelope.kind.is_empty() {
        return Err(ProtobufError::MissingKind);
    }
    let mut object = match envelope.content_type.as_str() {
        "" | PROTOBUF_CONTENT_TYPE => {
            let schema = schema_for(&envelope.api_version, &envelope.kind).ok_or_else(|| {
                ProtobufError::UnknownKind {
                    api_version: envelope.api_version.clone(),
                    kind: envelope.kind.clone(),
                }
            })?;
            decode_message(envelope.raw, schema, depth + 1)?
        }
        // Go allows an envelope around JSON; nothing sends it, but it costs
        // nothing to accept.
        "application/json" => serde_json::from_slice(envelope.raw).map_err(|error| {
            ProtobufError::InvalidEmbeddedJson {
                message: "runtime.Unknown",
                reason: error.to_string(),
            }
        })?,
        other => return Err(ProtobufError::UnsupportedContentType(other.to_string())),
    };
    if let Value::Object(fields) = &mut object {
        fields.insert("apiVersion".into(), Value::String(envelope.api_version));
        fields.insert("kind".into(), Value::String(envelope.kind));
    }
    Ok(object)
}

fn schema_for(api_version: &str, kind: &str) -> Option<&'static MessageSchema> {
    schema::KINDS
        .binary_search_by(|(candidate_version, candidate_kind, _)| {
            (*candidate_version, *candidate_kind).cmp(&(api_version, kind))
        })
        .ok()
        .map(|index| schema::KINDS[index].2)
        .or_else(|| {
            schema::ANY_VERSION_KINDS
                .iter()
                .find(|(candidate_kind, _)| *candidate_kind == kind)
                .map(|(_, schema)| *schema)
        })
}

/// `runtime.Unknown`: {1 typeMeta {1 apiVersion, 2 kind}, 2 raw,
/// 3 contentEncoding, 4 contentType}.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    const NAME: &'static str = "runtime.Unknown";
    const TYPE_META_NAME: &'static str = "runtime.TypeMeta";

    fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, ProtobufError> {
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = WireReader::new(bytes);
        while let Some((tag, value)) = reader.next_field()? {
            match tag {
                1 => {
                    let mut type_meta = WireReader::new(value.bytes(Self::NAME, tag)?);
                    while let Some((tag, value)) = type_meta.next_field()? {
                        match tag {
                            1 => envelope.api_version = value.string(Self::TYPE_META_NAME, tag)?,
                            2 => envelope.kind = value.string(Self::TYPE_META_NAME, tag)?,
                            _ => {}
                        }
                    }
                }
                2 => envelope.raw = value.bytes(Self::NAME, tag)?,
                3 => envelope.content_encoding = value.string(Self::NAME, tag)?,
                4 => envelope.content_type = value.string(Self::NAME, tag)?,
                _ => {}
            }
        }
        Ok(envelope)
    }
}

// ---------------------------------------------------------------------------
// The schema table's types. The generated file builds statics out of these.

/// One protobuf message type and how its JSON looks.
struct MessageSchema {
    /// The Go type's OpenAPI name, for error messages.
    go_name: &'static str,
    form: JsonForm,
    /// Sorted by tag.
    fields: &'static [FieldSchema],
}

/// How a message appears in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JsonForm {
    /// An object with a member per field.
    Object,
    /// `metav1.Time` {1 seconds, 2 nanos}: RFC 3339 in whole seconds.
    Time,
    /// `metav1.MicroTime`: RFC 3339 with six fractional digits.
    MicroTime,
    /// `metav1.Duration` {1 duration (ns)}: Go's `time.Duration` string.
    /// No type of the served groups has one today, so the table has none.
    #[cfg_attr(not(test), allow(dead_code))]
    Duration,
    /// `resource.Quantity` {1 string}.
    Quantity,
    /// `intstr.IntOrString` {1 type, 2 intVal, 3 strVal}.
    IntOrString,
    /// {1 raw bytes} holding JSON: `runtime.RawExtension`, `metav1.FieldsV1`,
    /// apiextensions `JSON`.
    EmbeddedJson,
    /// apiextensions `JSONSchemaPropsOrArray` {1 schema, 2 schemas}.
    SchemaOrArray,
    /// apiextensions `JSONSchemaPropsOrBool` {1 allows, 2 schema}.
    SchemaOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray` {1 schema, 2 property}.
    SchemaOrStringArray,
    /// A Go slice type (`Verbs`, `ExtraValue`) wrapped as {1 items}: the array.
    ItemsArray,
}

struct FieldSchema {
    tag: u32,
    json_name: &'static str,
    cardinality: Cardinality,
    value: ValueType,
    /// Print the field even at its zero value (a required field or a Go
    /// pointer); see the module documentation.
    keep_zero: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cardinality {
    Single,
    /// A Go struct embedded with `json:",inline"`: its members go into the
    /// parent object.
    Inline,
    Repeated,
    /// `map<string, V>`, encoded as repeated {1 key, 2 value} entries.
    Map,
}

#[derive(Clone, Copy)]
enum ValueType {
    Str,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    Message(&'static MessageSchema),
}

const fn message(
    go_name: &'static str,
    form: JsonForm,
    fields: &'static [FieldSchema],
) -> MessageSchema {
    MessageSchema {
        go_name,
        form,
        fields,
    }
}

const fn field(
    tag: u32,
    json_name: &'static str,
    cardinality: Cardinality,
    value: ValueType,
) -> FieldSchema {
    FieldSchema {
        tag,
        json_name,
        cardinality,
        value,
        keep_zero: false,
    }
}

const fn single(tag: u32, json_name: &'static str, value: ValueType) -> FieldSchema {
    field(tag, json_name, Cardinality::Single, value)
}

const fn inline(tag: u32, value: ValueType) -> FieldSchema {
    field(tag, "", Cardinality::Inline, value)
}

const fn repeated(tag: u32, json_name: &'static str, value: ValueType) -> FieldSchema {
    field(tag, json_name, Cardinality::Repeated, value)
}

const fn map(tag: u32, json_name: &'static str, value: ValueType) -> FieldSchema {
    field(tag, json_name, Cardinality::Map, value)
}

impl FieldSchema {
    const fn keep_zero(mut self) -> FieldSchema {
        self.keep_zero = true;
        self
    }
}

// ---------------------------------------------------------------------------
// Wire format.

/// Protobuf wire types that Kubernetes messages use (no groups).
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LENGTH_DELIMITED: u8 = 2;
const WIRE_FIXED32: u8 = 5;

#[derive(Clone, Copy)]
enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    LengthDelimited(&'a [u8]),
    /// No Kubernetes field is a 32-bit fixed value; only skipped.
    Fixed32,
}

impl<'a> WireValue<'a> {
    fn wire_type(self) -> u8 {
        match self {
            WireValue::Varint(_) => WIRE_VARINT,
            WireValue::Fixed64(_) => WIRE_FIXED64,
            WireValue::LengthDelimited(_) => WIRE_LENGTH_DELIMITED,
            WireValue::Fixed32 => WIRE_FIXED32,
        }
    }

    fn mismatch(self, message: &'static str, field: u32, expected: u8) -> ProtobufError {
        ProtobufError::WrongWireType {
            message,
            field,
            expected,
            found: self.wire_type(),
        }
    }

    fn bytes(self, message: &'static str, field: u32) -> Result<&'a [u8], ProtobufError> {
        match self {
            WireValue::LengthDelimited(bytes) => Ok(bytes),
            other => Err(other.mismatch(message, field, WIRE_LENGTH_DELIMITED)),
        }
    }

    /// Go strings may hold any bytes; `encoding/json` replaces invalid UTF-8
    /// with U+FFFD, and so does this.
    fn string(self, message: &'static str, field: u32) -> Result<String, ProtobufError> {
        Ok(String::from_utf8_lossy(self.bytes(message, field)?).into_owned())
    }

    fn varint(self, message: &'static str, field: u32) -> Result<u64, ProtobufError> {
        match self {
            WireValue::Varint(value) => Ok(value),
            other => Err(other.mismatch(message, field, WIRE_VARINT)),
        }
    }
}

struct WireReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> WireReader<'a> {
        WireReader { bytes, position: 0 }
    }

    fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        for index in 0..10 {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or(ProtobufError::Truncated(what))?;
            self.position += 1;
            // The tenth byte may only contribute the 64th bit.
            if index == 9 && byte > 1 {
                return Err(ProtobufError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::VarintOverflow)
    }

    fn take(&mut self, length: usize, what: &'static str) -> Result<&'a [u8], ProtobufError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(ProtobufError::Truncated(what))?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtobufError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    /// The next field's number and value, or `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtobufError> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint("a field key")?;
        let number = key >> 3;
        let field = u32::try_from(number)
            .ok()
            .filter(|field| (1..=(1 << 29) - 1).contains(field))
            .ok_or(ProtobufError::InvalidFieldNumber(number))?;
        let wire_type = (key & 0x7) as u8;
        let value = match wire_type {
            WIRE_VARINT => WireValue::Varint(self.varint("a varint")?),
            WIRE_FIXED64 => WireValue::Fixed64(u64::from_le_bytes(self.fixed("a 64-bit value")?)),
            WIRE_LENGTH_DELIMITED => {
                let length = self.varint("a length")?;
                let length = usize::try_from(length)
                    .map_err(|_| ProtobufError::Truncated("a length-delimited value"))?;
                WireValue::LengthDelimited(self.take(length, "a length-delimited value")?)
            }
            WIRE_FIXED32 => {
                self.take(4, "a 32-bit value")?;
                WireValue::Fixed32
            }
            other => return Err(ProtobufError::UnsupportedWireType(other)),
        };
        Ok(Some((field, value)))
    }
}

// ---------------------------------------------------------------------------
// Messages.

/// A decoded scalar, kept typed until its JSON form is chosen.
#[derive(Clone, Debug, PartialEq)]
enum Scalar {
    Str(String),
    Bytes(Vec<u8>),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl Scalar {
    fn is_zero(&self) -> bool {
        match self {
            Scalar::Str(text) => text.is_empty(),
            Scalar::Bytes(bytes) => bytes.is_empty(),
            Scalar::Bool(value) => !value,
            Scalar::Int(value) => *value == 0,
            Scalar::Double(value) => *value == 0.0,
        }
    }

    fn into_json(self, message: &'static str, field: u32) -> Result<Value, ProtobufError> {
        Ok(match self {
            Scalar::Str(text) => Value::String(text),
            Scalar::Bytes(bytes) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Scalar::Bool(value) => Value::Bool(value),
            Scalar::Int(value) => Value::Number(value.into()),
            Scalar::Double(value) => {
                double_to_json(value).ok_or(ProtobufError::NonFiniteDouble {
                    message,
                    field,
                    value,
                })?
            }
        })
    }
}

/// Go prints integral floats without a fraction (`1`, not `1.0`); keeping
/// those as JSON integers gives the same text.
fn double_to_json(value: f64) -> Option<Value> {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() < EXACT_INTEGER_LIMIT {
        return Some(Value::Number((value as i64).into()));
    }
    Number::from_f64(value).map(Value::Number)
}

/// What the bytes held for one field of the schema, before JSON conversion.
enum Slot<'a> {
    /// A singular scalar; the last occurrence wins.
    Scalar(Scalar),
    /// A singular message; protobuf merges repeated occurrences, which is
    /// the same as decoding their concatenation.
    Pieces(Vec<&'a [u8]>),
    Items(Vec<Value>),
    Entries(Vec<(String, Value)>),
}

/// The decoded fields of one message, by position in its schema.
struct Fields<'a> {
    schema: &'static MessageSchema,
    slots: Vec<Option<Slot<'a>>>,
    depth: usize,
}

impl<'a> Fields<'a> {
    fn read(
        bytes: &'a [u8],
        schema: &'static MessageSchema,
        depth: usize,
    ) -> Result<Fields<'a>, ProtobufError> {
        let mut slots: Vec<Option<Slot<'a>>> = Vec::new();
        slots.resize_with(schema.fields.len(), || None);
        let mut reader = WireReader::new(bytes);
        while let Some((tag, value)) = reader.next_field()? {
            // Fields the table does not know (newer Kubernetes versions) are
            // skipped, as Go skips unknown fields.
            let Ok(index) = schema.fields.binary_search_by_key(&tag, |field| field.tag) else {
                continue;
            };
            let field = &schema.fields[index];
            let slot = &mut slots[index];
            match field.cardinality {
                Cardinality::Single | Cardinality::Inline => match field.value {
                    ValueType::Message(_) => {
                        let bytes = value.bytes(schema.go_name, tag)?;
                        match slot {
                            Some(Slot::Pieces(pieces)) => pieces.push(bytes),
                            _ => *slot = Some(Slot::Pieces(vec![bytes])),
                        }
                    }
                    scalar_type => {
                        *slot = Some(Slot::Scalar(read_scalar(
                            value,
                            scalar_type,
                            schema.go_name,
                            tag,
                        )?));
                    }
                },
                Cardinality::Repeated => {
                    let mut items = match slot.take() {
                        Some(Slot::Items(items)) => items,
                        _ => Vec::new(),
                    };
                    read_repeated(value, field, schema.go_name, depth, &mut items)?;
                    *slot = Some(Slot::Items(items));
                }
                Cardinality::Map => {
                    let entry = read_map_entry(value.bytes(schema.go_name, tag)?, field, depth)?;
                    match slot {
                        Some(Slot::Entries(entries)) => entries.push(entry),
                        _ => *slot = Some(Slot::Entries(vec![entry])),
                    }
                }
            }
        }
        Ok(Fields {
            schema,
            slots,
            depth,
        })
    }

    fn index_of(&self, tag: u32) -> Option<usize> {
        self.schema
            .fields
            .binary_search_by_key(&tag, |field| field.tag)
            .ok()
    }

    fn take_slot(&mut self, tag: u32) -> Option<Slot<'a>> {
        let index = self.index_of(tag)?;
        self.slots[index].take()
    }

    fn take_scalar(&mut self, tag: u32) -> Option<Scalar> {
        match self.take_slot(tag)? {
            Slot::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    fn take_int(&mut self, tag: u32) -> i64 {
        match self.take_scalar(tag) {
            Some(Scalar::Int(value)) => value,
            _ => 0,
        }
    }

    fn take_message(&mut self, tag: u32) -> Result<Option<Value>, ProtobufError> {
        let Some(index) = self.index_of(tag) else {
            return Ok(None);
        };
        let ValueType::Message(target) = self.schema.fields[index].value else {
            return Ok(None);
        };
        match self.slots[index].take() {
            Some(Slot::Pieces(pieces)) => Ok(Some(decode_pieces(&pieces, target, self.depth + 1)?)),
            _ => Ok(None),
        }
    }

    fn take_items(&mut self, tag: u32) -> Vec<Value> {
        match self.take_slot(tag) {
            Some(Slot::Items(items)) => items,
            _ => Vec::new(),
        }
    }

    /// The JSON object of an `Object`-form message.
    fn into_object(self) -> Result<Map<String, Value>, ProtobufError> {
        let mut object = Map::new();
        for (field, slot) in self.schema.fields.iter().zip(self.slots) {
            let Some(slot) = slot else {
                continue;
            };
            match slot {
                Slot::Scalar(scalar) => {
                    if field.keep_zero || !scalar.is_zero() {
                        object.insert(
                            field.json_name.into(),
                            scalar.into_json(self.schema.go_name, field.tag)?,
                        );
                    }
                }
                Slot::Pieces(pieces) => {
                    let ValueType::Message(target) = field.value else {
                        continue;
                    };
                    let value = decode_pieces(&pieces, target, self.depth + 1)?;
                    match (field.cardinality, value) {
                        (Cardinality::Inline, Value::Object(members)) => object.extend(members),
                        (_, value) => {
                            object.insert(field.json_name.into(), value);
                        }
                    }
                }
                Slot::Items(items) => {
                    if !items.is_empty() {
                        object.insert(field.json_name.into(), Value::Array(items));
                    }
                }
                Slot::Entries(entries) => {
                    if !entries.is_empty() {
                        // Later duplicates win, as when Go fills a map.
                        let members: Map<String, Value> = entries.into_iter().collect();
                        object.insert(field.json_name.into(), Value::Object(members));
                    }
                }
            }
        }
        Ok(object)
    }
}

fn read_scalar(
    value: WireValue<'_>,
    scalar_type: ValueType,
    message: &'static str,
    field: u32,
) -> Result<Scalar, ProtobufError> {
    Ok(match scalar_type {
        ValueType::Str => Scalar::Str(value.string(message, field)?),
        ValueType::Bytes => Scalar::Bytes(value.bytes(message, field)?.to_vec()),
        ValueType::Bool => Scalar::Bool(value.varint(message, field)? != 0),
        // Go keeps the low 32 bits of an int32's (sign-extended) varint.
        ValueType::Int32 => Scalar::Int(i64::from(value.varint(message, field)? as i32)),
        ValueType::Int64 => Scalar::Int(value.varint(message, field)? as i64),
        ValueType::Double => match value {
            WireValue::Fixed64(bits) => Scalar::Double(f64::from_bits(bits)),
            other => return Err(other.mismatch(message, field, WIRE_FIXED64)),
        },
        ValueType::Message(_) => unreachable!("messages are not scalars"),
    })
}

/// One occurrence of a repeated field: a message, a scalar, or (for numbers
/// and bools) a packed run of scalars.
fn read_repeated(
    value: WireValue<'_>,
    field: &FieldSchema,
    message: &'static str,
    depth: usize,
    items: &mut Vec<Value>,
) -> Result<(), ProtobufError> {
    match (field.value, value) {
        (ValueType::Message(target), value) => {
            let bytes = value.bytes(message, field.tag)?;
            items.push(decode_message(bytes, target, depth + 1)?);
        }
        (
            ValueType::Bool | ValueType::Int32 | ValueType::Int64,
            WireValue::LengthDelimited(packed),
        ) => {
            let mut reader = WireReader::new(packed);
            while !reader.is_empty() {
                let element = WireValue::Varint(reader.varint("a packed varint")?);
                let scalar = read_scalar(element, field.value, message, field.tag)?;
                items.push(scalar.into_json(message, field.tag)?);
            }
        }
        (ValueType::Double, WireValue::LengthDelimited(packed)) => {
            let mut reader = WireReader::new(packed);
            while !reader.is_empty() {
                let element =
                    WireValue::Fixed64(u64::from_le_bytes(reader.fixed("a packed 64-bit value")?));
                let scalar = read_scalar(element, field.value, message, field.tag)?;
                items.push(scalar.into_json(message, field.tag)?);
            }
        }
        (scalar_type, value) => {
            let scalar = read_scalar(value, scalar_type, message, field.tag)?;
            items.push(scalar.into_json(message, field.tag)?);
        }
    }
    Ok(())
}

/// A map entry {1 key, 2 value}; a missing part is its zero value.
fn read_map_entry(
    bytes: &[u8],
    field: &FieldSchema,
    depth: usize,
) -> Result<(String, Value), ProtobufError> {
    const ENTRY: &str = "map entry";
    let mut key = String::new();
    let mut scalar: Option<Scalar> = None;
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut reader = WireReader::new(bytes);
    while let Some((tag, value)) = reader.next_field()? {
        match (tag, field.value) {
            (1, _) => key = value.string(ENTRY, tag)?,
            (2, ValueType::Message(_)) => pieces.push(value.bytes(ENTRY, tag)?),
            (2, scalar_type) => scalar = Some(read_scalar(value, scalar_type, ENTRY, tag)?),
            _ => {}
        }
    }
    let value = match field.value {
        ValueType::Message(target) => decode_pieces(&pieces, target, depth + 1)?,
        scalar_type => scalar
            .unwrap_or_else(|| zero_scalar(scalar_type))
            .into_json(ENTRY, 2)?,
    };
    Ok((key, value))
}

fn zero_scalar(scalar_type: ValueType) -> Scalar {
    match scalar_type {
        ValueType::Str => Scalar::Str(String::new()),
        ValueType::Bytes => Scalar::Bytes(Vec::new()),
        ValueType::Bool => Scalar::Bool(false),
        ValueType::Double => Scalar::Double(0.0),
        ValueType::Int32 | ValueType::Int64 | ValueType::Message(_) => Scalar::Int(0),
    }
}

fn decode_pieces(
    pieces: &[&[u8]],
    schema: &'static MessageSchema,
    depth: usize,
) -> Result<Value, ProtobufError> {
    match pieces {
        [] => decode_message(&[], schema, depth),
        [only] => decode_message(only, schema, depth),
        several => decode_message(&several.concat(), schema, depth),
    }
}

fn decode_message(
    bytes: &[u8],
    schema: &'static MessageSchema,
    depth: usize,
) -> Result<Value, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    // Go's Time/MicroTime write nothing for the zero time, and read empty
    // bytes back as the zero time, which prints as null.
    if matches!(schema.form, JsonForm::Time | JsonForm::MicroTime) && bytes.is_empty() {
        return Ok(Value::Null);
    }
    let mut fields = Fields::read(bytes, schema, depth)?;
    Ok(match schema.form {
        JsonForm::Object => Value::Object(fields.into_object()?),
        JsonForm::Time | JsonForm::MicroTime => {
            let seconds = fields.take_int(1);
            // nanos is an int32 on the wire.
            let nanos = i64::from(fields.take_int(2) as i32);
            let fraction_digits = if schema.form == JsonForm::MicroTime {
                6
            } else {
                0
            };
            Value::String(format_rfc3339(seconds, nanos, fraction_digits)?)
        }
        JsonForm::Duration => Value::String(go_duration_string(fields.take_int(1))),
        JsonForm::Quantity => match fields.take_scalar(1) {
            Some(Scalar::Str(text)) if !text.is_empty() => Value::String(text),
            // The zero Quantity prints as "0".
            _ => Value::String("0".into()),
        },
        JsonForm::IntOrString => match fields.take_int(1) {
            0 => Value::Number(i64::from(fields.take_int(2) as i32).into()),
            1 => match fields.take_scalar(3) {
                Some(Scalar::Str(text)) => Value::String(text),
                _ => Value::String(String::new()),
            },
            other => return Err(ProtobufError::InvalidIntOrStringType(other)),
        },
        JsonForm::EmbeddedJson => match fields.take_scalar(1) {
            Some(Scalar::Bytes(raw)) if !raw.is_empty() => {
                embedded_json(&raw, schema.go_name, depth)?
            }
            // Go prints a nil RawExtension/FieldsV1/JSON as null.
            _ => Value::Null,
        },
        JsonForm::SchemaOrArray => {
            let schemas = fields.take_items(2);
            if !schemas.is_empty() {
                Value::Array(schemas)
            } else {
                fields.take_message(1)?.unwrap_or(Value::Null)
            }
        }
        JsonForm::SchemaOrBool => match fields.take_message(2)? {
            Some(schema_value) => schema_value,
            None => Value::Bool(matches!(fields.take_scalar(1), Some(Scalar::Bool(true)))),
        },
        JsonForm::SchemaOrStringArray => {
            let property = fields.take_items(2);
            if !property.is_empty() {
                Value::Array(property)
            } else {
                fields.take_message(1)?.unwrap_or(Value::Null)
            }
        }
        JsonForm::ItemsArray => Value::Array(fields.take_items(1)),
    })
}

/// The value inside a RawExtension-like message: JSON as clients normally
/// send it, or a nested Kubernetes protobuf object.
fn embedded_json(raw: &[u8], message: &'static str, depth: usize) -> Result<Value, ProtobufError> {
    match serde_json::from_slice(raw) {
        Ok(value) => Ok(value),
        Err(_) if raw.starts_with(MAGIC) => decode_body(raw, depth + 1),
        Err(error) => Err(ProtobufError::InvalidEmbeddedJson {
            message,
            reason: error.to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------
// Go's text forms of times and durations.

/// `time.Unix(seconds, nanos).UTC()` in RFC 3339, with `fraction_digits`
/// fractional second digits (truncated, as Go formats them).
fn format_rfc3339(seconds: i64, nanos: i64, fraction_digits: u32) -> Result<String, ProtobufError> {
    const NANOS_PER_SECOND: i64 = 1_000_000_000;
    let out_of_range = || ProtobufError::TimestampOutOfRange { seconds, nanos };
    let total_seconds = seconds
        .checked_add(nanos.div_euclid(NANOS_PER_SECOND))
        .ok_or_else(out_of_range)?;
    let nanos_of_second = nanos.rem_euclid(NANOS_PER_SECOND);
    let days = total_seconds.div_euclid(86_400);
    let second_of_day = total_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return Err(out_of_range());
    }
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if fraction_digits > 0 {
        let fraction = nanos_of_second / 10_i64.pow(9 - fraction_digits);
        text.push_str(&format!(
            ".{fraction:0width$}",
            width = fraction_digits as usize
        ));
    }
    text.push('Z');
    Ok(text)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1m0s`, `1.5ms`, `0s`.
fn go_duration_string(nanoseconds: i64) -> String {
    if nanoseconds == 0 {
        return "0s".into();
    }
    let sign = if nanoseconds < 0 { "-" } else { "" };
    let magnitude = nanoseconds.unsigned_abs();
    if magnitude < 1_000_000_000 {
        let (unit, precision) = match magnitude {
            0..1_000 => ("ns", 0),
            1_000..1_000_000 => ("µs", 3),
            _ => ("ms", 6),
        };
        let (whole, fraction) = split_fraction(magnitude, precision);
        return format!("{sign}{whole}{fraction}{unit}");
    }
    let (whole_seconds, fraction) = split_fraction(magnitude, 9);
    let (hours, minutes, seconds) = (
        whole_seconds / 3600,
        whole_seconds / 60 % 60,
        whole_seconds % 60,
    );
    let mut text = String::from(sign);
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if whole_seconds >= 60 {
        text.push_str(&format!("{minutes}m"));
    }
    text.push_str(&format!("{seconds}{fraction}s"));
    text
}

/// `value / 10^precision` as its integer part and a `.digits` fraction with
/// trailing zeros removed (empty when the fraction is zero).
fn split_fraction(value: u64, precision: u32) -> (u64, String) {
    let divisor = 10_u64.pow(precision);
    let fraction = value % divisor;
    if fraction == 0 {
        return (value / divisor, String::new());
    }
    let digits = format!("{fraction:0width$}", width = precision as usize);
    (
        value / divisor,
        format!(".{}", digits.trim_end_matches('0')),
    )
}

#[cfg(test)]
#[path = "protobuf_tests.rs"]
mod tests;
