//! The template engines of the injection API (spec §4.3,
//! `template_dialect`): MiniJinja (`Jinja`, the default), Handlebars, and
//! `Static` (no expansion).
//!
//! [`Templates`] holds every template of one request, compiled once when
//! the request is accepted; [`Templates::vars`] builds one recipient's
//! variables in the form the dialect needs and [`Templates::render`]
//! expands one template with them. A compile error is a [`RequestError`]
//! (the whole request is refused, HTTP 422); a render error is a `String`
//! that fails only that recipient.
//!
//! HTML escaping follows KumoMTA, for both engines: only the HTML body
//! templates (`html_body`, `amp_html_body`) escape what they insert
//! (Jinja: `{{ x }}` is escaped, `{{ x|safe }}` is not; Handlebars:
//! `{{x}}` is escaped, `{{{x}}}` is not). The text body, the subject, the
//! headers, the addresses and a complete-message template are never
//! escaped, since they are not HTML.

use crate::generate::RequestError;
use crate::request::{Recipient, TemplateDialect};
use handlebars::Renderable;
use minijinja::Value as JinjaValue;
use minijinja::value::merge_maps;
use serde_json::{Map, Value};
use std::sync::LazyLock;

/// One compiled template of a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TemplateId(usize);

/// Whether what a template inserts is HTML-escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Plain text: inserted values are copied as they are.
    None,
    /// An HTML part: inserted values are escaped unless marked raw.
    Html,
}

/// The two Handlebars registries: index 0 copies values as they are,
/// index 1 escapes them for HTML. Built once per process: they hold only
/// the built-in helpers; templates are kept per request. Escaping is a
/// property of the registry rather than of the render context because
/// Handlebars turns the context's escaping back on after every `{{{x}}}`.
static HANDLEBARS: LazyLock<[handlebars::Handlebars<'static>; 2]> = LazyLock::new(|| {
    [Escape::None, Escape::Html].map(|escape| {
        let mut registry = handlebars::Handlebars::new();
        // Not strict: a missing variable renders as empty text, as in the
        // Jinja dialect and in KumoMTA. Recursive lookup lets a name
        // inside `{{#each}}` or `{{#with}}` fall back to the outer scopes
        // (Mustache behaviour, which KumoMTA turns on).
        registry.set_strict_mode(false);
        registry.set_recursive_lookup(true);
        if escape == Escape::None {
            registry.register_escape_fn(handlebars::no_escape);
        }
        registry
    })
});

struct HandlebarsTemplate {
    template: handlebars::Template,
    escape: Escape,
}

enum Engine<'r> {
    /// The environment and each template's name in it (`N`, or
    /// `N.html` for an escaping one). Boxed: the environment is large
    /// and there is one engine per request.
    Jinja(Box<minijinja::Environment<'r>>, Vec<String>),
    Static(Vec<&'r str>),
    Handlebars(Vec<HandlebarsTemplate>),
}

/// One recipient's template variables, in the dialect's own form.
pub(crate) enum Vars {
    Jinja(JinjaValue),
    Handlebars(handlebars::Context),
    Static,
}

/// The request-wide variables, prepared once per request.
enum Globals<'r> {
    Jinja(JinjaValue),
    Json(&'r Map<String, Value>),
    None,
}

/// All templates of one request and the engine that expands them.
pub(crate) struct Templates<'r> {
    engine: Engine<'r>,
    count: usize,
    globals: Globals<'r>,
}

impl<'r> Templates<'r> {
    /// An empty set for `dialect`; `substitutions` are the request-wide
    /// variables every recipient sees.
    pub(crate) fn new(dialect: TemplateDialect, substitutions: &'r Map<String, Value>) -> Self {
        let (engine, globals) = match dialect {
            TemplateDialect::Jinja => {
                let mut env = minijinja::Environment::new();
                // Keep a template's final newline: content is mail text,
                // where Jinja's default of dropping it would change the
                // message.
                env.set_keep_trailing_newline(true);
                // Undefined variables render as empty text (MiniJinja's
                // lenient default, which KumoMTA also uses); a typo in a
                // variable name therefore does not fail the recipient.
                env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
                // The HTML parts escape, the rest does not; the name
                // carries the choice, as in KumoMTA.
                env.set_auto_escape_callback(|name| {
                    if name.ends_with(".html") {
                        minijinja::AutoEscape::Html
                    } else {
                        minijinja::AutoEscape::None
                    }
                });
                (
                    Engine::Jinja(Box::new(env), Vec::new()),
                    Globals::Jinja(JinjaValue::from_serialize(substitutions)),
                )
            }
            TemplateDialect::Static => (Engine::Static(Vec::new()), Globals::None),
            TemplateDialect::Handlebars => {
                (Engine::Handlebars(Vec::new()), Globals::Json(substitutions))
            }
        };
        Self {
            engine,
            count: 0,
            globals,
        }
    }

    /// Compile `source`, the value of the request field `field`.
    pub(crate) fn add(
        &mut self,
        field: &str,
        source: &'r str,
        escape: Escape,
    ) -> Result<TemplateId, RequestError> {
        let id = self.count;
        let syntax_error = |message: String| RequestError::Template {
            field: field.to_string(),
            message,
        };
        match &mut self.engine {
            Engine::Jinja(env, names) => {
                let name = match escape {
                    Escape::None => id.to_string(),
                    Escape::Html => format!("{id}.html"),
                };
                env.add_template_owned(name.clone(), source)
                    .map_err(|err| syntax_error(describe_jinja(&err)))?;
                names.push(name);
            }
            Engine::Static(sources) => sources.push(source),
            Engine::Handlebars(templates) => {
                let template = handlebars::Template::compile_with_name(source, field.to_string())
                    .map_err(|err| syntax_error(describe_handlebars(&err)))?;
                templates.push(HandlebarsTemplate { template, escape });
            }
        }
        self.count += 1;
        Ok(TemplateId(id))
    }

    /// The variables of `recipient`, from lowest to highest precedence:
    /// the request's substitutions; `email`, `name` (when given) and
    /// `to_header`; the recipient's own substitutions.
    pub(crate) fn vars(&self, recipient: &Recipient, to_header: &str) -> Vars {
        let own = recipient.substitutions.as_ref().filter(|s| !s.is_empty());
        match &self.globals {
            Globals::None => Vars::Static,
            Globals::Jinja(globals) => {
                let builtins = match &recipient.name {
                    Some(name) => minijinja::context! {
                        email => recipient.email.as_str(),
                        name => name.as_str(),
                        to_header => to_header,
                    },
                    None => minijinja::context! {
                        email => recipient.email.as_str(),
                        to_header => to_header,
                    },
                };
                Vars::Jinja(match own {
                    Some(subs) => {
                        merge_maps([globals.clone(), builtins, JinjaValue::from_serialize(subs)])
                    }
                    None => merge_maps([globals.clone(), builtins]),
                })
            }
            Globals::Json(globals) => {
                let mut map = (*globals).clone();
                map.insert("email".into(), Value::from(recipient.email.as_str()));
                if let Some(name) = &recipient.name {
                    map.insert("name".into(), Value::from(name.as_str()));
                }
                map.insert("to_header".into(), Value::from(to_header));
                if let Some(subs) = own {
                    map.extend(subs.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                Vars::Handlebars(handlebars::Context::from(Value::Object(map)))
            }
        }
    }

    /// Expand template `id` with one recipient's variables.
    pub(crate) fn render(&self, id: TemplateId, vars: &Vars) -> Result<String, String> {
        match (&self.engine, vars) {
            (Engine::Jinja(env, names), Vars::Jinja(ctx)) => env
                .get_template(&names[id.0])
                .and_then(|t| t.render(ctx))
                .map_err(|err| describe_jinja(&err)),
            (Engine::Static(sources), _) => Ok(sources[id.0].to_string()),
            (Engine::Handlebars(templates), Vars::Handlebars(ctx)) => {
                let HandlebarsTemplate { template, escape } = &templates[id.0];
                let registry = &HANDLEBARS[usize::from(*escape == Escape::Html)];
                let mut rc = handlebars::RenderContext::new(template.name.as_ref());
                rc.set_recursive_lookup(true);
                template
                    .renders(registry, ctx, &mut rc)
                    .map_err(|err| err.to_string())
            }
            _ => Err("internal error: variables of another template dialect".into()),
        }
    }
}

/// MiniJinja's error with its detail (line and reason), on one line.
fn describe_jinja(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    if let Some(detail) = err.detail()
        && !text.contains(detail)
    {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

/// A Handlebars syntax error on one line: the reason and where it is
/// (Handlebars' own text spans several lines with a source excerpt).
fn describe_handlebars(err: &handlebars::TemplateError) -> String {
    match err.pos() {
        Some((line, column)) => format!("{} (line {line}, column {column})", err.reason()),
        None => err.reason().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(json: Value) -> Recipient {
        serde_json::from_value(json).unwrap()
    }

    fn render_one(
        dialect: TemplateDialect,
        globals: Value,
        rcpt: Value,
        source: &str,
        escape: Escape,
    ) -> Result<String, String> {
        let Value::Object(globals) = globals else {
            panic!("globals must be an object")
        };
        let mut templates = Templates::new(dialect, &globals);
        let id = templates.add("f", source, escape).unwrap();
        let rcpt = recipient(rcpt);
        let vars = templates.vars(&rcpt, "\"R\" <r@example.com>");
        templates.render(id, &vars)
    }

    #[test]
    fn handlebars_precedence_and_builtins() {
        let out = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({"who": "global", "name": "global-name", "n": 3}),
            serde_json::json!({"email": "r@example.com", "name": "R",
                               "substitutions": {"who": "local"}}),
            "{{name}} {{email}} {{who}} {{n}} {{to_header}} [{{nothing}}]\n",
            Escape::None,
        )
        .unwrap();
        assert_eq!(out, "R r@example.com local 3 \"R\" <r@example.com> []\n");
    }

    #[test]
    fn handlebars_escapes_only_html_templates() {
        let globals = serde_json::json!({"x": "<A & B>"});
        let rcpt = serde_json::json!({"email": "r@example.com"});
        let html = render_one(
            TemplateDialect::Handlebars,
            globals.clone(),
            rcpt.clone(),
            "{{x}}|{{{x}}}|{{x}}",
            Escape::Html,
        )
        .unwrap();
        assert_eq!(html, "&lt;A &amp; B&gt;|<A & B>|&lt;A &amp; B&gt;");
        let text = render_one(
            TemplateDialect::Handlebars,
            globals,
            rcpt,
            "{{{x}}}|{{x}}",
            Escape::None,
        )
        .unwrap();
        // A raw insertion first must not turn escaping on for the rest.
        assert_eq!(text, "<A & B>|<A & B>");
    }

    #[test]
    fn handlebars_recursive_lookup_and_helpers() {
        let out = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({"brand": "Acme", "items": [{"sku": "a"}, {"sku": "b"}]}),
            serde_json::json!({"email": "r@example.com", "name": "rita"}),
            "{{#each items}}{{sku}}@{{brand}} {{/each}}{{#if name}}{{titleCase name}}{{else}}x{{/if}}",
            Escape::None,
        )
        .unwrap();
        assert_eq!(out, "a@Acme b@Acme Rita");
    }

    #[test]
    fn handlebars_unknown_helper_fails_the_render() {
        let err = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({}),
            serde_json::json!({"email": "r@example.com", "name": "John"}),
            "{{ name or 'Fred' }}",
            Escape::None,
        )
        .unwrap_err();
        assert!(err.contains("Helper not found"), "{err}");
    }

    #[test]
    fn handlebars_helper_names_shadow_variables_and_partials_fail() {
        let out = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({"len": "five"}),
            serde_json::json!({"email": "r@example.com"}),
            "[{{this.len}}]",
            Escape::None,
        )
        .unwrap();
        assert_eq!(out, "[five]");
        let bare = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({"len": "five"}),
            serde_json::json!({"email": "r@example.com"}),
            "[{{len}}]",
            Escape::None,
        );
        assert_ne!(bare.as_deref(), Ok("[five]"), "the helper wins");
        let err = render_one(
            TemplateDialect::Handlebars,
            serde_json::json!({}),
            serde_json::json!({"email": "r@example.com"}),
            "{{> footer}}",
            Escape::None,
        )
        .unwrap_err();
        assert!(err.to_lowercase().contains("partial"), "{err}");
    }

    #[test]
    fn handlebars_syntax_error_is_one_line_and_names_the_field() {
        let globals = Map::new();
        let mut templates = Templates::new(TemplateDialect::Handlebars, &globals);
        let err = templates
            .add("subject", "ok\n{{#if x}}never closed", Escape::None)
            .unwrap_err();
        let RequestError::Template { field, message } = &err else {
            panic!("expected a template error, got {err:?}")
        };
        assert_eq!(field, "subject");
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn jinja_escapes_only_html_templates() {
        let globals = serde_json::json!({"x": "<A & B>"});
        let rcpt = serde_json::json!({"email": "r@example.com"});
        let source = "{{ x }}|{{ x|safe }}";
        let jinja = |escape| {
            render_one(
                TemplateDialect::Jinja,
                globals.clone(),
                rcpt.clone(),
                source,
                escape,
            )
            .unwrap()
        };
        assert_eq!(jinja(Escape::Html), "&lt;A &amp; B&gt;|<A & B>");
        assert_eq!(jinja(Escape::None), "<A & B>|<A & B>");
    }

    #[test]
    fn static_is_verbatim() {
        let globals = serde_json::json!({"x": "<b>"});
        let rcpt = serde_json::json!({"email": "r@example.com"});
        assert_eq!(
            render_one(
                TemplateDialect::Static,
                globals,
                rcpt,
                "{{x}}",
                Escape::Html
            )
            .unwrap(),
            "{{x}}"
        );
    }
}
