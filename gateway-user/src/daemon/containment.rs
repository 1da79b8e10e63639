//! Refuses policies whose agents could walk out of their cgroup. Governance follows the cgroup
//! a process is in; a user who may write a cgroup above the governed one (systemd delegates
//! user@.service to its user this way) can create a sibling there and move into it, out of
//! reach of the programs. Such a set is rejected whole, like any other bad policy.

use crate::{
    cgroup::{Delegated, Hierarchy, is_within},
    policy::PolicySet,
};

use super::DaemonError;

/// Fails when a policy governs a cgroup below a delegated one that no policy governs.
pub(crate) fn refuse_escapable(hierarchy: &Hierarchy, set: &PolicySet) -> Result<(), DaemonError> {
    let governed: Vec<&str> = set.policies.iter().map(|p| p.cgroup.as_str()).collect();
    let mut refused = Vec::new();
    for p in &set.policies {
        let delegated = hierarchy.delegated(&p.cgroup)?;
        if let Some(own) = delegated.iter().find(|d| d.cgroup == p.cgroup) {
            // Its owner can make sub-cgroups, but they are descendants: still governed.
            tracing::info!(policy.name = %p.name, cgroup = %own, "governed cgroup is delegated; its sub-cgroups stay governed");
        }
        if let Some(open) = escape(&p.cgroup, &delegated, &governed) {
            let who = match open.uid() {
                Some(uid) => format!("uid {uid}"),
                None => "users other than root".into(),
            };
            refused.push(format!(
                "policy {:?} ({}): cgroup {} is below {open}, which {who} may write: a process \
                 of that user can create a cgroup there and move out of governance. Govern {} \
                 itself (its whole subtree is then governed) or take the delegation back",
                p.name,
                p.file.display(),
                p.cgroup,
                open.cgroup,
            ));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Escapable(refused.join("\n")))
    }
}

/// The first writable ancestor of `cgroup` that lies outside every governed cgroup: a process
/// moved into a new cgroup there has no governed ancestor. `delegated` lists `cgroup` and its
/// ancestors that others may write; the cgroup itself never counts (what is made below it is
/// governed).
fn escape<'a>(
    cgroup: &str,
    delegated: &'a [Delegated],
    governed: &[&str],
) -> Option<&'a Delegated> {
    delegated
        .iter()
        .find(|d| d.cgroup != cgroup && !governed.iter().any(|g| is_within(&d.cgroup, g)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Ownership;

    fn open(cgroup: &str, uid: u32) -> Delegated {
        Delegated {
            cgroup: cgroup.into(),
            dir: format!("/sys/fs/cgroup{cgroup}").into(),
            owner: Ownership { uid, mode: 0o755 },
            procs: Some(Ownership { uid, mode: 0o644 }),
        }
    }

    #[test]
    fn a_writable_ancestor_must_lie_in_a_governed_cgroup() {
        let user = "/user.slice/user-1000.slice/user@1000.service";
        let agent = "/user.slice/user-1000.slice/user@1000.service/app.slice/agent";
        let agent_up = [open(agent, 1000), open(user, 1000)];
        // (governed cgroups, the escape they leave, if any)
        let cases: [(&[&str], Option<&str>); 6] = [
            (&[agent], Some(user)),
            (&[agent, user], None),
            // A policy higher up covers the delegated subtree too: the nearest governed
            // ancestor of an escaped process is that policy's cgroup.
            (&[agent, "/user.slice"], None),
            (
                &[
                    agent,
                    "/user.slice/user-1000.slice/user@1000.service/app.slice",
                ],
                Some(user),
            ),
            // A prefix of the name is not an ancestor.
            (
                &[agent, "/user.slice/user-1000.slice/user@1000.serv"],
                Some(user),
            ),
            (&[agent, "/other"], Some(user)),
        ];
        for (governed, want) in cases {
            let got = escape(agent, &agent_up, governed).map(|d| d.cgroup.as_str());
            assert_eq!(got, want, "{governed:?}");
        }
        // The governed cgroup being delegated itself is fine.
        assert_eq!(escape(agent, &[open(agent, 1000)], &[agent]), None);
        // Of two, the nearer uncovered one is named.
        let two = [open("/a/b", 7), open("/a", 8)];
        assert_eq!(
            escape("/a/b/c", &two, &["/a/b/c"]).map(|d| d.owner.uid),
            Some(7)
        );
        assert_eq!(
            escape("/a/b/c", &two, &["/a/b/c", "/a/b"]).map(|d| d.owner.uid),
            Some(8)
        );
    }
}
