//! Rejections: every way a request can be refused, and the one function that turns
//! a rejection into the documented JSON error response.
//!
//! The status codes and `error` codes are part of hookgate's public interface
//! (product.md, "Error responses"); tests and operators match on them.

use serde::Serialize;

/// One schema violation, reported in `details` (enforce mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the payload, e.g. `/call/direction`.
    pub path: String,
    /// What the schema expected; never contains payload values.
    pub message: String,
}

/// Why a request was refused. Each variant maps to exactly one status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 403: the client address is not in the allow list.
    IpNotAllowed,
    /// 401: the shared-secret header is missing or wrong.
    Unauthorized,
    /// 404: no route for the path.
    RouteNotFound,
    /// 405: the route exists but the method is not POST.
    MethodNotAllowed,
    /// 415: the body is not declared as `application/json`.
    UnsupportedMediaType,
    /// 413: the body exceeds the route's limit.
    BodyTooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// 408: the body did not arrive within the body timeout.
    BodyTimeout,
    /// 400: the request's framing is broken (bad chunking, truncated body, bad headers).
    BadRequest(String),
    /// 400: the body is not strict JSON.
    InvalidJson(String),
    /// 422: the body violates the route's schema.
    SchemaViolation(Vec<Violation>),
    /// 502: the upstream refused, reset or answered garbage.
    UpstreamUnavailable,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 431: the request head has too many fields or bytes.
    HeaderTooLarge,
    /// 503: the memory budget for bodies in flight is used up; try again.
    Overloaded,
    /// 503: the spool's disk budget (or the disk) is full; nothing was accepted.
    SpoolFull,
    /// 503: the spool could not write the message (I/O error); nothing was accepted.
    SpoolUnavailable,
    /// 409: the same webhook is being accepted right now (spool routes); retry.
    DuplicateInProgress,
}

impl Rejection {
    /// The HTTP status of this rejection.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::IpNotAllowed => 403,
            Rejection::Unauthorized => 401,
            Rejection::RouteNotFound => 404,
            Rejection::MethodNotAllowed => 405,
            Rejection::UnsupportedMediaType => 415,
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::BodyTimeout => 408,
            Rejection::BadRequest(_) | Rejection::InvalidJson(_) => 400,
            Rejection::SchemaViolation(_) => 422,
            Rejection::UpstreamUnavailable => 502,
            Rejection::UpstreamTimeout => 504,
            Rejection::HeaderTooLarge => 431,
            Rejection::Overloaded | Rejection::SpoolFull | Rejection::SpoolUnavailable => 503,
            Rejection::DuplicateInProgress => 409,
        }
    }

    /// The stable machine-readable code; also the `outcome` label in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::IpNotAllowed => "ip_not_allowed",
            Rejection::Unauthorized => "unauthorized",
            Rejection::RouteNotFound => "route_not_found",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::UnsupportedMediaType => "unsupported_media_type",
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::SchemaViolation(_) => "schema_violation",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::Overloaded => "overloaded",
            Rejection::SpoolFull => "spool_full",
            Rejection::SpoolUnavailable => "spool_unavailable",
            Rejection::DuplicateInProgress => "duplicate_in_progress",
        }
    }

    /// A human sentence for the `message` member. Never echoes client data
    /// beyond positions and sizes.
    pub fn message(&self) -> String {
        match self {
            Rejection::IpNotAllowed => "the client address is not allowed".into(),
            Rejection::Unauthorized => "missing or wrong shared secret".into(),
            Rejection::RouteNotFound => "no route for this path".into(),
            Rejection::MethodNotAllowed => "only POST is allowed on this route".into(),
            Rejection::UnsupportedMediaType => "the body must be sent as application/json".into(),
            Rejection::BodyTooLarge { limit } => {
                format!("the body is larger than this route's limit of {limit} bytes")
            }
            Rejection::BodyTimeout => "the body did not arrive in time".into(),
            Rejection::BadRequest(m) => format!("malformed request: {m}"),
            Rejection::InvalidJson(m) => format!("the body is not valid JSON: {m}"),
            Rejection::SchemaViolation(v) => {
                format!(
                    "the payload does not match the route's schema ({} violation(s) listed)",
                    v.len()
                )
            }
            Rejection::UpstreamUnavailable => "the upstream is unavailable".into(),
            Rejection::UpstreamTimeout => "the upstream did not answer in time".into(),
            Rejection::HeaderTooLarge => "the request head has too many fields or bytes".into(),
            Rejection::Overloaded => "too many request bodies in flight; retry shortly".into(),
            Rejection::SpoolFull => "the spool is full; the webhook was not accepted".into(),
            Rejection::SpoolUnavailable => {
                "the spool could not store the webhook; it was not accepted".into()
            }
            Rejection::DuplicateInProgress => {
                "the same webhook is being accepted right now; retry shortly".into()
            }
        }
    }

    /// Whether the connection must be closed after this answer, because the rest
    /// of the request can no longer be read or trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Rejection::BodyTooLarge { .. }
                | Rejection::BodyTimeout
                | Rejection::BadRequest(_)
                | Rejection::HeaderTooLarge
                | Rejection::Overloaded
        )
    }

    /// The JSON body of the error response.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a [Violation]>,
        }
        let details = match self {
            Rejection::SchemaViolation(v) => Some(v.as_slice()),
            _ => None,
        };
        let body = Body {
            error: self.code(),
            message: self.message(),
            details,
        };
        // Serializing plain strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&Rejection::RouteNotFound.to_json()).unwrap();
        assert_eq!(v["error"], "route_not_found");
        assert!(v["message"].is_string());
        assert!(v.get("details").is_none());

        let r = Rejection::SchemaViolation(vec![Violation {
            path: "/call/direction".into(),
            message: "not one of in, out".into(),
        }]);
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["error"], "schema_violation");
        assert_eq!(v["details"][0]["path"], "/call/direction");
        assert_eq!(r.status(), 422);
    }

    #[test]
    fn statuses_match_product_table() {
        let table = [
            (Rejection::IpNotAllowed, 403, "ip_not_allowed"),
            (Rejection::Unauthorized, 401, "unauthorized"),
            (Rejection::RouteNotFound, 404, "route_not_found"),
            (Rejection::MethodNotAllowed, 405, "method_not_allowed"),
            (
                Rejection::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (Rejection::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (Rejection::BodyTimeout, 408, "body_timeout"),
            (Rejection::InvalidJson("x".into()), 400, "invalid_json"),
            (Rejection::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Rejection::UpstreamTimeout, 504, "upstream_timeout"),
            (Rejection::SpoolFull, 503, "spool_full"),
            (Rejection::SpoolUnavailable, 503, "spool_unavailable"),
            (Rejection::DuplicateInProgress, 409, "duplicate_in_progress"),
        ];
        for (r, status, code) in table {
            assert_eq!(r.status(), status, "{code}");
            assert_eq!(r.code(), code);
        }
    }
}
