//! Dynamic-security commands, their responses, and which errors leave the state as the operation wants it.

use serde::Deserialize;
use zeroize::Zeroizing;

/// Which error of a command still means success for the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tolerate {
    /// Every error fails the operation.
    Nothing,
    /// "... already exists" (create of something that exists; a later modify brings it in line).
    AlreadyExists,
    /// "... not found" / "... does not exist" (disable or delete of something that is gone).
    NotFound,
}

/// One command of a request. Its JSON may hold a password, so it is zeroized on drop and not printed.
pub(crate) struct Command {
    name: String,
    body: Zeroizing<String>,
    tolerate: Tolerate,
}

impl Command {
    /// A command with no secret in it.
    pub(crate) fn new(body: serde_json::Value, tolerate: Tolerate) -> Self {
        Self::secret(body, tolerate)
    }

    /// A command whose JSON holds a secret (a password).
    pub(crate) fn secret(body: serde_json::Value, tolerate: Tolerate) -> Self {
        let name = body.get("command").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
        Self { name, body: Zeroizing::new(body.to_string()), tolerate }
    }

    /// The command's name (`createClient`, ...).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// The JSON payload of a request: `{"commands": [...]}`, each command tagged `<request>:<index>`.
pub(crate) fn payload(request: &str, commands: &[Command]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("{\"commands\":["));
    for (index, command) in commands.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        // Every body is a JSON object `{...}`: splice the tag in before its closing brace.
        let body = command.body.trim_end();
        let open = body.strip_suffix('}').unwrap_or(body);
        out.push_str(open);
        if open.trim_end().ends_with('{') {
            out.push_str(&format!("\"correlationData\":\"{request}:{index}\"}}"));
        } else {
            out.push_str(&format!(",\"correlationData\":\"{request}:{index}\"}}"));
        }
    }
    out.push_str("]}");
    out
}

/// One entry of the plugin's `responses`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Response {
    pub(crate) command: String,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default, rename = "correlationData")]
    pub(crate) correlation_data: Option<String>,
    /// What a `get...` command answers.
    #[serde(default)]
    pub(crate) data: Option<serde_json::Value>,
}

/// The plugin's answer message.
#[derive(Debug, Deserialize)]
pub(crate) struct Responses {
    pub(crate) responses: Vec<Response>,
}

impl Responses {
    /// The request id the answer belongs to (the part of the first tag before `:`).
    pub(crate) fn request(&self) -> Option<&str> {
        let tag = self.responses.first()?.correlation_data.as_deref()?;
        tag.split(':').next()
    }
}

/// Checks every response against its command: how many errors were tolerated, or the first error not
/// tolerated, as text.
pub(crate) fn check(commands: &[Command], responses: &[Response]) -> Result<usize, String> {
    if responses.len() != commands.len() {
        return Err(format!("the broker answered {} of {} commands", responses.len(), commands.len()));
    }
    let mut tolerated_errors = 0;
    for (command, response) in commands.iter().zip(responses) {
        if response.command != command.name() {
            return Err(format!("the broker answered {:?} to {:?}", response.command, command.name()));
        }
        let Some(error) = &response.error else { continue };
        let lower = error.to_ascii_lowercase();
        let tolerated = match command.tolerate {
            Tolerate::Nothing => false,
            Tolerate::AlreadyExists => lower.contains("already exists"),
            Tolerate::NotFound => lower.contains("not found") || lower.contains("does not exist"),
        };
        if !tolerated {
            return Err(format!("{}: {error}", command.name()));
        }
        tolerated_errors += 1;
    }
    Ok(tolerated_errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The payload is valid JSON with every command tagged in order.
    #[test]
    fn payload_tags_each_command() {
        let commands = vec![
            Command::new(json!({"command": "deleteClient", "username": "d"}), Tolerate::NotFound),
            Command::new(json!({"command": "getDefaultACLAccess"}), Tolerate::Nothing),
        ];
        let text = payload("req", &commands);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["commands"][0]["correlationData"], "req:0");
        assert_eq!(value["commands"][0]["username"], "d");
        assert_eq!(value["commands"][1]["correlationData"], "req:1");
        assert_eq!(value["commands"][1]["command"], "getDefaultACLAccess");
    }

    /// Tolerated errors pass, others fail naming the command; a short answer fails.
    #[test]
    fn check_tolerates_only_what_it_should() {
        let commands = vec![
            Command::new(json!({"command": "createRole"}), Tolerate::AlreadyExists),
            Command::new(json!({"command": "deleteClient"}), Tolerate::NotFound),
        ];
        let response = |command: &str, error: Option<&str>| Response {
            command: command.into(),
            error: error.map(Into::into),
            correlation_data: None,
            data: None,
        };
        let ok =
            [response("createRole", Some("Role already exists")), response("deleteClient", Some("Client not found"))];
        assert_eq!(check(&commands, &ok), Ok(2));
        let bad = [response("createRole", Some("Not authorized")), response("deleteClient", None)];
        assert_eq!(check(&commands, &bad), Err("createRole: Not authorized".into()));
        assert!(check(&commands, &ok[..1]).is_err());
    }
}
