//! The roles auth-svc grants, as ordered levels: `guest` < `user` < `admin`.
//!
//! Each level may do what the levels below it may: a guest reads, a user also writes, an admin also
//! administers. A caller's level is the highest level among its roles, so `["admin"]` alone is enough for
//! anything a user may do. Roles are still plain strings in tokens and in storage; this module only says
//! how the known ones compare.

/// A role that is also a level of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// May read (e.g. list and get posts), not write.
    Guest,
    /// May read and write their own things: every new account's role unless `--default-role` says otherwise.
    User,
    /// May do anything, including the admin RPCs.
    Admin,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Guest, Level::User, Level::Admin];

    /// The role name, as tokens and storage carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// The level a role name stands for; `None` for a role that is not a level.
    pub fn parse(role: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.as_str() == role)
    }

    /// The highest level among `roles`; `None` when none of them is a level.
    pub fn of<S: AsRef<str>>(roles: &[S]) -> Option<Self> {
        roles.iter().filter_map(|role| Self::parse(role.as_ref())).max()
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_a_caller_has_the_highest_of_its_roles() {
        assert!(Level::Guest < Level::User && Level::User < Level::Admin);
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
        }
        assert_eq!(Level::parse("Admin"), None, "role names are exact");
        assert_eq!(Level::of(&["user", "admin"]), Some(Level::Admin));
        assert_eq!(Level::of(&["admin"]), Some(Level::Admin));
        assert_eq!(Level::of(&["guest", "auditor"]), Some(Level::Guest));
        assert_eq!(Level::of::<&str>(&[]), None);
        assert_eq!(Level::of(&["auditor"]), None);
    }
}
