//! `kumo.on`: event handler registration and lookup (§1.4).
//!
//! Handlers are kept per Lua state. Most events take a single handler and
//! registering a second one is an error that points at the first; a fixed
//! set of events take a chain of handlers, called in registration order
//! until one returns a value. Registration is only allowed while the policy
//! file itself is being evaluated (or in `--script` mode's `main`).

use mlua::{Function, Lua, Value};
use parking_lot::Mutex;
use std::collections::HashMap;

/// Events that accept several handlers.
pub const MULTI_HANDLER_EVENTS: &[&str] = &[
    "pre_init",
    "validate_config",
    "get_queue_config",
    "should_enqueue_log_record",
    "requeue_message",
    "throttle_insert_ready_queue",
    "get_acl_definition",
];

/// KumoMTA events that Tern never fires, with the reason. Registering a
/// handler for one is refused: a handler that silently never runs (a
/// throttle never applied, a rebind never done) is worse than an error.
pub const UNFIRED_EVENTS: &[(&str, &str)] = &[(
    "xfer_message_received",
    "there is no inter-node transfer yet",
)];

pub fn is_multi_handler(event: &str) -> bool {
    MULTI_HANDLER_EVENTS.contains(&event)
}

/// Name of the Lua global that holds the event being dispatched.
pub const CURRENT_EVENT_GLOBAL: &str = "_KUMO_CURRENT_EVENT";

struct Handler {
    function: Function,
    location: String,
}

/// The handlers of one Lua state, stored in its app data.
#[derive(Default)]
pub struct HandlerTable {
    handlers: Mutex<HashMap<String, Vec<Handler>>>,
}

impl HandlerTable {
    pub fn register(
        &self,
        event: &str,
        function: Function,
        location: String,
    ) -> Result<(), String> {
        let mut handlers = self.handlers.lock();
        let list = handlers.entry(event.to_string()).or_default();
        if !list.is_empty() && !is_multi_handler(event) {
            return Err(format!(
                "{event} event already has a handler defined at {}",
                list[0].location
            ));
        }
        list.push(Handler { function, location });
        Ok(())
    }

    pub fn handlers(&self, event: &str) -> Vec<Function> {
        self.handlers
            .lock()
            .get(event)
            .map(|list| list.iter().map(|h| h.function.clone()).collect())
            .unwrap_or_default()
    }

    pub fn has_handler(&self, event: &str) -> bool {
        self.handlers
            .lock()
            .get(event)
            .is_some_and(|l| !l.is_empty())
    }

    /// The events that have at least one handler.
    pub fn events(&self) -> std::collections::HashSet<String> {
        self.handlers
            .lock()
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(event, _)| event.clone())
            .collect()
    }
}

/// The `file:line` of the Lua code that called the current Rust function.
pub fn caller_location(lua: &Lua) -> String {
    lua.inspect_stack(1, |debug| {
        let source = debug.source();
        let file = source
            .short_src
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into());
        match debug.current_line() {
            Some(line) => format!("{file}:{line}"),
            None => file,
        }
    })
    .unwrap_or_else(|| "?".to_string())
}

/// The event currently being dispatched in this state, if any.
pub fn current_event(lua: &Lua) -> Option<String> {
    match lua.globals().raw_get::<Value>(CURRENT_EVENT_GLOBAL) {
        Ok(Value::String(s)) => Some(s.to_string_lossy()),
        _ => None,
    }
}

/// The body of `kumo.on(name, function)`.
pub fn kumo_on(
    lua: &Lua,
    table: &HandlerTable,
    event: String,
    function: Function,
) -> mlua::Result<()> {
    if let Some(running) = current_event(lua)
        && running != "main"
    {
        return Err(mlua::Error::runtime(format!(
            "kumo.on('{event}', ...) must be called at the top level of the policy, \
             not while the '{running}' event is running"
        )));
    }
    let location = caller_location(lua);
    if let Some((_, why)) = UNFIRED_EVENTS.iter().find(|(name, _)| *name == event) {
        return Err(mlua::Error::runtime(format!(
            "{location}: kumo.on('{event}', ...): the {event} event is not supported by \
             Tern yet ({why}), so this handler would never run"
        )));
    }
    table
        .register(&event, function, location)
        .map_err(mlua::Error::runtime)
}
