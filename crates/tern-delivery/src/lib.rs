//! Outbound delivery for Tern (work in progress): connection plans, the
//! async SMTP client and Maildir delivery.
