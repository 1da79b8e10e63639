//! Who may do what on the admin socket. The kernel tells us the caller's uid and gid
//! (SO_PEERCRED); the config names the users and groups that may approve and those that may
//! only read. Root may do both. The socket itself is open to every local user, so that an
//! approver needs no membership in the daemon's own group: every request is checked here.

use super::Request;

pub use crate::config::Principals;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Nobody,
    /// Sessions, events, approvals and status: read only.
    Auditor,
    /// An auditor who also approves and denies.
    Approver,
}

/// The caller of one admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub user: String,
    pub groups: Vec<String>,
}

impl Caller {
    /// Names the uid and its groups from the system's user database.
    pub fn from_peer(uid: u32, gid: u32) -> Caller {
        let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
        let name = user
            .as_ref()
            .map_or_else(|| uid.to_string(), |u| u.name.clone());
        let mut groups = Vec::new();
        let gids = match &user {
            Some(u) => std::ffi::CString::new(u.name.clone())
                .ok()
                .and_then(|c| nix::unistd::getgrouplist(&c, gid.into()).ok())
                .unwrap_or_else(|| vec![gid.into()]),
            None => vec![gid.into()],
        };
        for g in gids {
            if let Ok(Some(group)) = nix::unistd::Group::from_gid(g) {
                groups.push(group.name);
            }
        }
        Caller {
            uid,
            user: name,
            groups,
        }
    }

    pub fn role(&self, approvers: &Principals, auditors: &Principals) -> Role {
        let named = |p: &Principals| {
            p.users.contains(&self.user) || self.groups.iter().any(|g| p.groups.contains(g))
        };
        if self.uid == 0 || named(approvers) {
            Role::Approver
        } else if named(auditors) {
            Role::Auditor
        } else {
            Role::Nobody
        }
    }
}

/// The least role a request needs.
pub fn needs(req: &Request) -> Role {
    match req {
        Request::Health => Role::Nobody,
        Request::Approve { .. } | Request::Deny { .. } => Role::Approver,
        Request::Status
        | Request::SessionsList { .. }
        | Request::SessionsShow { .. }
        | Request::AuditVerify
        | Request::AuditExport { .. }
        | Request::ApprovalsList
        | Request::ApprovalsWatch => Role::Auditor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_names_and_groups() {
        let approvers = Principals {
            users: vec!["alice".into()],
            groups: vec!["sre".into()],
        };
        let auditors = Principals {
            users: vec![],
            groups: vec!["security".into()],
        };
        let caller = |uid, user: &str, groups: &[&str]| Caller {
            uid,
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        #[rustfmt::skip]
        let cases = [
            (caller(0, "root", &["root"]), Role::Approver),
            (caller(1000, "alice", &["alice"]), Role::Approver),
            (caller(1001, "bob", &["bob", "sre"]), Role::Approver),
            (caller(1002, "carol", &["security"]), Role::Auditor),
            (caller(1003, "mallory", &["users"]), Role::Nobody),
        ];
        for (c, role) in cases {
            assert_eq!(c.role(&approvers, &auditors), role, "{c:?}");
        }
        assert_eq!(needs(&Request::Health), Role::Nobody);
        assert_eq!(
            needs(&Request::Deny {
                id: 1,
                reason: String::new()
            }),
            Role::Approver
        );
        assert_eq!(needs(&Request::ApprovalsList), Role::Auditor);
    }
}
