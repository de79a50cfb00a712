//! SSM error replies: an error code (`__type`), a message and the HTTP status.

use std::fmt;

/// An error the simulator answers with, rendered as `{"__type":CODE,"message":TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The HTTP status: 500 for `InternalServerError`, 400 otherwise.
    pub(crate) http_status: u16,
    /// The error code, e.g. `InvocationDoesNotExist`.
    pub(crate) code: String,
    /// The human-readable message.
    pub(crate) message: String,
}

impl ApiError {
    /// An error with this code; the HTTP status follows from the code.
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        let http_status = if code == "InternalServerError" {
            500
        } else {
            400
        };
        ApiError {
            http_status,
            code,
            message: message.into(),
        }
    }

    /// `InvocationDoesNotExist`, as SSM answers for unknown or not-yet-visible invocations.
    pub(crate) fn invocation_does_not_exist() -> Self {
        ApiError::new(
            "InvocationDoesNotExist",
            "The command invocation does not exist",
        )
    }

    /// `ValidationException` with this message.
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        ApiError::new("ValidationException", message)
    }

    /// `ThrottlingException: Rate exceeded`.
    pub(crate) fn throttled() -> Self {
        ApiError::new("ThrottlingException", "Rate exceeded")
    }

    /// `UnknownOperationException` (no message), for targets the simulator does not serve.
    pub(crate) fn unknown_operation() -> Self {
        ApiError::new("UnknownOperationException", "")
    }

    /// HTTP 500 `InternalServerError`.
    pub(crate) fn internal() -> Self {
        ApiError::new(
            "InternalServerError",
            "An internal error occurred (injected by ssm-sim)",
        )
    }

    /// The JSON body of the reply; `message` is left out when empty.
    pub(crate) fn body(&self) -> serde_json::Value {
        if self.message.is_empty() {
            serde_json::json!({ "__type": self.code })
        } else {
            serde_json::json!({ "__type": self.code, "message": self.message })
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_code() {
        assert_eq!(ApiError::internal().http_status, 500);
        assert_eq!(ApiError::throttled().http_status, 400);
        assert_eq!(
            ApiError::throttled().body().to_string(),
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
        );
    }
}
