//! `kumo.reject` and `kumo.disconnect`: a policy refuses something by
//! raising a special error that carries an SMTP-style code and text.
//!
//! The error travels through Lua as an mlua external error; whoever
//! dispatched the event finds it with [`Rejection::from_lua_error`] and
//! turns it into an SMTP reply, a failed HTTP recipient, a bounce, and so
//! on, depending on the event.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectMode {
    /// Send the reply, then close the connection.
    ForceDisconnect,
    /// Send the reply, then a 421, then close.
    FollowWith421,
    /// Close only when the code is 421.
    If421,
}

impl DisconnectMode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "ForceDisconnect" => Ok(Self::ForceDisconnect),
            "FollowWith421" => Ok(Self::FollowWith421),
            "If421" => Ok(Self::If421),
            other => Err(format!(
                "invalid disconnect mode '{other}': expected ForceDisconnect, FollowWith421 or If421"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub message: String,
    /// `None` for `kumo.reject`: the connection stays open unless the code is 421.
    pub disconnect: Option<DisconnectMode>,
}

impl Rejection {
    /// Find a rejection anywhere in the chain of an mlua error.
    pub fn from_lua_error(err: &mlua::Error) -> Option<&Rejection> {
        err.downcast_ref::<Rejection>()
    }

    /// Whether the SMTP session must end after this reply.
    pub fn closes_connection(&self) -> bool {
        match self.disconnect {
            None | Some(DisconnectMode::If421) => self.code == 421,
            Some(_) => true,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}
