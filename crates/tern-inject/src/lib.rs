//! The HTTP injection API's core (work in progress): request types,
//! templates and the MIME builder.
