//! The OpenAPI 3 description of the HTTP API, served at
//! `/api-docs/openapi.json` and printed by `tern serve
//! --dump-openapi-spec`. Written by hand so that it says exactly what the
//! routes in this module accept and answer.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            "application/json": { "schema": { "$ref": "#/components/schemas/Error" } }
        }
    })
}

fn text_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "text/plain": { "schema": { "type": "string" } } }
    })
}

fn schemas() -> Value {
    json!({
        "InjectV1Request": {
            "type": "object",
            "required": ["envelope_sender", "recipients", "content"],
            "properties": {
                "envelope_sender": {
                    "type": "string",
                    "description": "The envelope sender (MAIL FROM) of every generated message, user@domain.",
                    "example": "noreply@example.com"
                },
                "recipients": {
                    "type": "array",
                    "minItems": 1,
                    "description": "One message is generated per recipient.",
                    "items": { "$ref": "#/components/schemas/Recipient" }
                },
                "content": { "$ref": "#/components/schemas/Content" },
                "substitutions": {
                    "type": "object",
                    "additionalProperties": true,
                    "description": "Template variables shared by all recipients (any JSON values)."
                },
                "template_dialect": {
                    "type": "string",
                    "enum": ["Jinja", "Static", "Handlebars"],
                    "default": "Jinja",
                    "description": "Jinja (MiniJinja, the default) or Handlebars expands templates; Static uses the content verbatim. Only html_body and amp_html_body are HTML-escaped."
                },
                "deferred_generation": {
                    "type": "boolean",
                    "default": false,
                    "description": "Queue the request itself (templates are checked now) and expand it later from the internal queue generator.kumomta.internal; the answer then has success_count 0."
                },
                "deferred_spool": {
                    "type": "boolean",
                    "default": false,
                    "description": "Queue the generated messages without writing them to the spool first."
                },
                "trace_headers": { "$ref": "#/components/schemas/TraceHeaders" }
            }
        },
        "Recipient": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": { "type": "string", "example": "recipient@example.com" },
                "name": { "type": "string", "description": "Display name; template variable `name`." },
                "substitutions": {
                    "type": "object",
                    "additionalProperties": true,
                    "description": "Per-recipient template variables; they override the global ones."
                },
                "metadata": {
                    "type": "object",
                    "additionalProperties": true,
                    "description": "Stored on the message as meta `extra` when non-empty."
                }
            }
        },
        "Content": {
            "description": "A complete RFC 5322 message (expanded as one template, then re-encoded), or a builder object.",
            "oneOf": [
                { "type": "string", "example": "Subject: hello\n\nHello {{ name }}" },
                { "$ref": "#/components/schemas/BuilderContent" }
            ]
        },
        "BuilderContent": {
            "type": "object",
            "additionalProperties": false,
            "description": "At least one of text_body and html_body is required.",
            "properties": {
                "text_body": { "type": "string", "description": "text/plain part (template)." },
                "html_body": { "type": "string", "description": "text/html part (template)." },
                "amp_html_body": { "type": "string", "description": "text/x-amp-html part (template)." },
                "attachments": {
                    "type": "array",
                    "items": { "$ref": "#/components/schemas/Attachment" }
                },
                "headers": {
                    "type": "object",
                    "additionalProperties": { "type": "string" },
                    "description": "Extra header fields; each value is a template."
                },
                "from": { "$ref": "#/components/schemas/Address" },
                "reply_to": { "$ref": "#/components/schemas/Address" },
                "subject": { "type": "string", "description": "Subject (template)." }
            }
        },
        "Address": {
            "type": "object",
            "additionalProperties": false,
            "required": ["email"],
            "properties": {
                "email": { "type": "string" },
                "name": { "type": "string" }
            }
        },
        "Attachment": {
            "type": "object",
            "additionalProperties": false,
            "required": ["data", "content_type"],
            "properties": {
                "data": { "type": "string", "description": "UTF-8 text, or base64 when `base64` is true. Not templated." },
                "content_type": { "type": "string", "example": "image/gif" },
                "base64": { "type": "boolean", "default": false },
                "file_name": { "type": "string" },
                "content_id": { "type": "string", "description": "Makes the attachment inline, in a multipart/related with the body." }
            }
        },
        "TraceHeaders": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "received_header": { "type": "boolean", "default": false },
                "supplemental_header": { "type": "boolean", "default": true },
                "header_name": { "type": "string", "default": "X-KumoRef" },
                "include_meta_names": { "type": "array", "items": { "type": "string" }, "default": [] }
            }
        },
        "InjectV1Response": {
            "type": "object",
            "required": ["success_count", "fail_count", "failed_recipients", "errors"],
            "properties": {
                "success_count": { "type": "integer", "minimum": 0 },
                "fail_count": { "type": "integer", "minimum": 0 },
                "failed_recipients": { "type": "array", "items": { "type": "string" } },
                "errors": {
                    "type": "array",
                    "items": { "type": "string" },
                    "description": "One `<email>: <reason>` entry per failed recipient."
                }
            }
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "string" } }
        }
    })
}

/// The OpenAPI description of the HTTP API, as JSON text.
pub fn openapi_spec() -> String {
    let spec = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tern HTTP API",
            "description": "Message injection and health checks of the Tern MTA (KumoMTA-compatible).",
            "version": env!("CARGO_PKG_VERSION")
        },
        "paths": {
            "/api/inject/v1": {
                "post": {
                    "operationId": "inject_v1",
                    "summary": "Generate and queue one message per recipient.",
                    "description": "Allowed for trusted hosts and for any authenticated identity (HTTP Basic or Bearer, validated by the policy). Answers 200 even when some or all recipients failed: see fail_count and errors.",
                    "security": [ {}, { "basic": [] }, { "bearer": [] } ],
                    "requestBody": {
                        "required": true,
                        "description": "May be sent with Content-Encoding gzip or deflate; the size limit applies to the decompressed body.",
                        "content": {
                            "application/json": {
                                "schema": { "$ref": "#/components/schemas/InjectV1Request" }
                            }
                        }
                    },
                    "responses": {
                        "200": {
                            "description": "The request was processed; per-recipient outcomes in the body.",
                            "content": {
                                "application/json": {
                                    "schema": { "$ref": "#/components/schemas/InjectV1Response" }
                                }
                            }
                        },
                        "400": error_response("Malformed JSON, an empty recipient list, or an undecodable compressed body (a malformed Authorization header answers 400 in text/plain)."),
                        "401": text_response("Authentication failed, or the peer is neither trusted nor authenticated."),
                        "413": text_response("The (decompressed) body is larger than request_body_limit."),
                        "415": error_response("Content-Type is not application/json, or the Content-Encoding is unsupported."),
                        "422": error_response("A field has the wrong type or is missing, a template does not compile, a builder field is invalid, or a feature is not supported by Tern yet."),
                        "500": error_response("The envelope sender is invalid, or an internal error."),
                        "503": error_response("Not accepting messages now: shutting down, waiting for spool startup, load shedding (memory), disk is too full, or a spool write failed.")
                    }
                }
            },
            "/api/check-liveness/v1": {
                "get": {
                    "operationId": "check_liveness_v1",
                    "summary": "Whether the server accepts messages now.",
                    "security": [ {} ],
                    "responses": {
                        "200": text_response("Ready."),
                        "503": text_response("Not ready; the body says why (shutting down, waiting for spool startup, load shedding, disk is too full).")
                    }
                }
            },
            "/api/admin/memory/stats": {
                "get": {
                    "operationId": "memory_stats",
                    "summary": "Memory usage, the hard and soft limits, the low threshold, and whether load shedding is active.",
                    "responses": {
                        "200": text_response("Indented JSON for people."),
                        "401": text_response("Authentication failed, or the peer is neither trusted nor authenticated.")
                    }
                }
            },
            "/api/admin/suspend-ready-q/v1": {
                "post": {
                    "operationId": "suspend_ready_q_v1",
                    "summary": "Suspend one ready queue (source->site): source selection skips it and its waiting messages are not sent. Body: {name, reason, duration? (default 5m), expires?}; answer {id}.",
                    "responses": {
                        "200": { "description": "The rule is active." },
                        "400": error_response("Invalid JSON, an unknown field, an empty name or reason, or a bad duration/expires."),
                        "401": text_response("The peer is not a trusted host."),
                        "503": error_response("The queues are not running yet.")
                    }
                },
                "get": {
                    "operationId": "suspend_ready_q_list_v1",
                    "summary": "The active ready-queue suspensions.",
                    "responses": { "200": { "description": "A JSON array." }, "401": text_response("The peer is not a trusted host.") }
                },
                "delete": {
                    "operationId": "suspend_ready_q_cancel_v1",
                    "summary": "End a ready-queue suspension: body {id}.",
                    "responses": { "200": { "description": "Cancelled." }, "404": error_response("No active rule has that id."), "401": text_response("The peer is not a trusted host.") }
                }
            },
            "/api/admin/rebind/v1": {
                "post": {
                    "operationId": "rebind_v1",
                    "summary": "Move the messages of the matching scheduled queues: write data into their metadata (or call rebind_message with trigger_rebind_event) and file them in the queue that now names. Body: {reason, data, domain?, routing_domain?, tenant?, campaign?, always_flush?, suppress_logging?, trigger_rebind_event?}; answer {}.",
                    "responses": {
                        "200": { "description": "The rebind runs in the background." },
                        "400": error_response("Invalid JSON, an unknown field, an empty reason, or no data."),
                        "401": text_response("The peer is not a trusted host."),
                        "503": error_response("The queues are not running yet.")
                    }
                }
            },
            "/api/admin/inspect-sched-q/v1": {
                "get": {
                    "operationId": "inspect_sched_q_v1",
                    "summary": "A scheduled queue: ?queue_name=..&want_body=bool&limit=N; answer {queue_name, queue_config, num_scheduled, delayed_metric, now, last_changed, messages: [{id, message}]}.",
                    "responses": {
                        "200": { "description": "The queue." },
                        "400": error_response("A bad query."),
                        "401": text_response("The peer is not a trusted host."),
                        "404": error_response("No scheduled queue has that name."),
                        "503": error_response("The queues are not running yet.")
                    }
                }
            },
            "/api/admin/inspect-message/v1": {
                "get": {
                    "operationId": "inspect_message_v1",
                    "summary": "A message as the spool holds it: ?id=<spool id>&want_body=bool; answer {id, message: {sender, recipient, meta, scheduling, due: null, num_attempts: null, data?}}.",
                    "responses": {
                        "200": { "description": "The message." },
                        "400": error_response("The id is not a spool id."),
                        "401": text_response("The peer is not a trusted host."),
                        "404": error_response("The spool has no such message.")
                    }
                }
            },
            "/api/admin/bump-config-epoch": {
                "post": {
                    "operationId": "bump_config_epoch",
                    "summary": "Bump the configuration epoch: pooled Lua states are retired and Epoch-refreshed configuration is asked for again.",
                    "responses": { "200": text_response("Empty."), "401": text_response("The peer is not a trusted host.") }
                }
            },
            "/api/admin/set_diagnostic_log_filter/v1": {
                "post": {
                    "operationId": "set_diagnostic_log_filter_v1",
                    "summary": "Change the diagnostic log filter (KUMOD_LOG syntax): body {filter}; answer {}.",
                    "responses": {
                        "200": { "description": "The filter is in effect." },
                        "400": error_response("Invalid JSON or an invalid filter."),
                        "401": text_response("The peer is not a trusted host.")
                    }
                }
            },
            "/api/machine-info": {
                "get": {
                    "operationId": "machine_info",
                    "summary": "Facts about the host (MachineInfoV1): hostname, node_id, cores, memory, OS, kernel, MAC address, start time, version.",
                    "responses": {
                        "200": { "description": "The facts.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": text_response("The peer is not a trusted host.")
                    }
                }
            },
            "/api/admin/bounce/v1": {
                "post": {
                    "operationId": "bounce_v1",
                    "summary": "Bounce every message of the matching scheduled queues (no criteria: all queues), and new ones while the rule lasts. Body: {reason, domain?, routing_domain?, tenant?, campaign?, queue_names?, duration? (default 5m), expires?, suppress_logging?}; answer {id, bounced: {}, total_bounced: 0}.",
                    "responses": {
                        "200": { "description": "The rule is active; the sweep runs in the background." },
                        "400": error_response("Invalid JSON, an unknown field, an empty reason, or a bad duration/expires."),
                        "401": text_response("The peer is not a trusted host."),
                        "503": error_response("The queues are not running yet.")
                    }
                },
                "get": {
                    "operationId": "bounce_list_v1",
                    "summary": "The active bounce rules, with the messages bounced so far per queue.",
                    "responses": { "200": { "description": "A JSON array." }, "401": text_response("The peer is not a trusted host.") }
                },
                "delete": {
                    "operationId": "bounce_cancel_v1",
                    "summary": "End a bounce rule: body {id}.",
                    "responses": { "200": { "description": "Cancelled." }, "404": error_response("No active rule has that id."), "401": text_response("The peer is not a trusted host.") }
                }
            },
            "/api/admin/suspend/v1": {
                "post": {
                    "operationId": "suspend_v1",
                    "summary": "Promote nothing from the matching scheduled queues while the rule lasts (each due message gets a TransientFailure). Body: {reason, domain?, routing_domain?, tenant?, campaign?, queue_names?, duration? (default 5m), expires?}; answer {id}.",
                    "responses": {
                        "200": { "description": "The rule is active." },
                        "400": error_response("Invalid JSON, an unknown field, an empty reason, or a bad duration/expires."),
                        "401": text_response("The peer is not a trusted host."),
                        "503": error_response("The queues are not running yet.")
                    }
                },
                "get": {
                    "operationId": "suspend_list_v1",
                    "summary": "The active suspensions.",
                    "responses": { "200": { "description": "A JSON array." }, "401": text_response("The peer is not a trusted host.") }
                },
                "delete": {
                    "operationId": "suspend_cancel_v1",
                    "summary": "End a suspension: body {id}.",
                    "responses": { "200": { "description": "Cancelled." }, "404": error_response("No active rule has that id."), "401": text_response("The peer is not a trusted host.") }
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Counters and gauges in the Prometheus text exposition format (trusted hosts only).",
                    "parameters": [{
                        "name": "prefix", "in": "query", "required": false,
                        "description": "Put before every metric name, e.g. tern_.",
                        "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": text_response("text/plain; version=0.0.4"),
                        "400": error_response("The prefix cannot start a metric name."),
                        "401": text_response("The peer is not a trusted host.")
                    }
                }
            },
            "/metrics.json": {
                "get": {
                    "operationId": "metrics_json",
                    "summary": "The same metrics as JSON: {name: {help, type, value}}, labelled values nested by label (trusted hosts only).",
                    "responses": {
                        "200": { "description": "The metrics.", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "401": text_response("The peer is not a trusted host.")
                    }
                }
            },
            "/api-docs/openapi.json": {
                "get": {
                    "operationId": "openapi_json",
                    "summary": "This document.",
                    "security": [ {} ],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI description.",
                            "content": { "application/json": { "schema": { "type": "object" } } }
                        }
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "basic": { "type": "http", "scheme": "basic" },
                "bearer": { "type": "http", "scheme": "bearer" }
            },
            "schemas": schemas()
        }
    });
    serde_json::to_string_pretty(&spec).expect("the spec serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` points at a defined schema.
    #[test]
    fn references_resolve() {
        let spec: Value = serde_json::from_str(&openapi_spec()).unwrap();
        let schemas = spec["components"]["schemas"].as_object().unwrap();
        let text = openapi_spec();
        for piece in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "missing schema {name}");
        }
        assert_eq!(spec["openapi"], "3.0.3");
        assert!(spec["paths"]["/api/inject/v1"]["post"]["responses"]["413"].is_object());
    }

    /// The documented request fields are the ones the request type reads.
    #[test]
    fn request_fields_match_the_type() {
        let spec: Value = serde_json::from_str(&openapi_spec()).unwrap();
        let props = spec["components"]["schemas"]["InjectV1Request"]["properties"]
            .as_object()
            .unwrap();
        let request: tern_inject::InjectRequest = serde_json::from_value(json!({
            "envelope_sender": "a@example.com",
            "recipients": [{"email": "b@example.com"}],
            "content": "x"
        }))
        .unwrap();
        let round = serde_json::to_value(&request).unwrap();
        for key in round.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "undocumented field {key}");
        }
    }
}
