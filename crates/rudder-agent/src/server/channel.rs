//! The WebSocket channel protocols of `kubectl exec` (`channel.k8s.io`),
//! versions 4 and 5.
//!
//! Every binary message starts with a channel byte: 0 stdin (client to
//! server), 1 stdout, 2 stderr, 3 error (server to client: one
//! `metav1.Status` in JSON when the command is over), 4 terminal resize
//! (client to server, `{"Width":W,"Height":H}`). Version 5 adds 255, a close
//! signal: `[255, 0]` from the client means its stdin has ended. Version 4
//! clients cannot close stdin short of closing the connection.

use serde_json::{json, Value};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes one direction of a channel.
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// The subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

/// A negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

impl Protocol {
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            V5 => Some(Protocol::V5),
            V4 => Some(Protocol::V4),
            _ => None,
        }
    }
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What a client message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// v5: the client's stdin has ended.
    CloseStdin,
    Resize(TerminalSize),
    /// An empty message, or a close of a channel the server does not read.
    Nothing,
}

/// Why a client message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown channel {0} in a {1:?} message")]
    UnknownChannel(u8, Protocol),
    #[error("invalid resize message: {0}")]
    Resize(String),
}

/// Decodes a binary message from the client.
pub fn decode(protocol: Protocol, message: &[u8]) -> Result<Inbound, ProtocolError> {
    let Some((&channel, data)) = message.split_first() else {
        return Ok(Inbound::Nothing);
    };
    match channel {
        STDIN => Ok(Inbound::Stdin(data.to_vec())),
        RESIZE => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            let size: Size =
                serde_json::from_slice(data).map_err(|e| ProtocolError::Resize(e.to_string()))?;
            Ok(Inbound::Resize(TerminalSize {
                width: size.width,
                height: size.height,
            }))
        }
        CLOSE if protocol == Protocol::V5 => match data.first() {
            Some(&STDIN) => Ok(Inbound::CloseStdin),
            _ => Ok(Inbound::Nothing),
        },
        other => Err(ProtocolError::UnknownChannel(other, protocol)),
    }
}

/// A server message: the channel byte, then the data.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// The Status of a command that exited 0, as the kubelet encodes it.
pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// The Status of a command that exited non-zero: client-go reads the code
/// from the `ExitCode` cause (`kubectl exec` exits with it).
pub fn non_zero_exit(command: &[String], code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The Status of a command that could not be run at all.
pub fn internal_error(message: &str) -> Value {
    let message = format!("error executing command in container: {message}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_client_messages() {
        assert_eq!(
            decode(Protocol::V5, &[0, b'h', b'i']),
            Ok(Inbound::Stdin(b"hi".to_vec()))
        );
        assert_eq!(decode(Protocol::V5, &[255, 0]), Ok(Inbound::CloseStdin));
        assert_eq!(decode(Protocol::V5, &[255, 1]), Ok(Inbound::Nothing));
        assert_eq!(decode(Protocol::V4, &[]), Ok(Inbound::Nothing));
        assert_eq!(
            decode(Protocol::V4, &[255, 0]),
            Err(ProtocolError::UnknownChannel(255, Protocol::V4))
        );
        assert_eq!(
            decode(Protocol::V5, b"\x04{\"Width\":80,\"Height\":24}"),
            Ok(Inbound::Resize(TerminalSize {
                width: 80,
                height: 24
            }))
        );
        assert!(matches!(
            decode(Protocol::V5, b"\x04nope"),
            Err(ProtocolError::Resize(_))
        ));
        assert_eq!(frame(STDOUT, b"out"), b"\x01out");
        assert_eq!(Protocol::from_name(V4), Some(Protocol::V4));
        assert_eq!(Protocol::from_name("channel.k8s.io"), None);
    }

    #[test]
    fn statuses_are_the_kubelets() {
        assert_eq!(
            success().to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let status = non_zero_exit(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(
            status["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        assert_eq!(
            status["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let status = internal_error("boom");
        assert_eq!(status["code"], 500);
        assert_eq!(
            status["message"],
            "Internal error occurred: error executing command in container: boom"
        );
    }
}
