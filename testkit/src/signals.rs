//! Signal (pub/sub) subscriptions and delivery, plus the connection registry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::latch::Latch;
use crate::locks::ConnId;
use crate::stats::SignalChannelInfo;

/// Pending pushes a connection may have before it is dropped.
pub(crate) const PUSH_QUEUE: usize = 64;

/// Per-connection control shared with the server.
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    /// Triggered to close the connection at once.
    pub(crate) kill: Latch,
}

struct SigConn {
    push: mpsc::Sender<Arc<[u8]>>,
    ctl: Arc<ConnCtl>,
    subs: Vec<(String, String)>,
}

#[derive(Default)]
struct Group {
    members: Vec<ConnId>,
    next: usize,
}

/// Outcome of `listen`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ListenResult {
    Ok,
    TooMany,
}

fn is_wild(p: &str) -> bool {
    p.contains(['*', '>'])
}

/// Does the literal `channel` match `pattern`?
pub(crate) fn matches(pattern: &str, channel: &str) -> bool {
    let mut chan = channel.split('.');
    for pt in pattern.split('.') {
        if pt == ">" {
            return chan.next().is_some();
        }
        match chan.next() {
            Some(ct) if pt == "*" || pt == ct => {}
            _ => return false,
        }
    }
    chan.next().is_none()
}

/// Subscriptions of every connection.
#[derive(Default)]
pub(crate) struct Signals {
    conns: HashMap<ConnId, SigConn>,
    exact: HashMap<String, Vec<ConnId>>,
    wild: Vec<(String, ConnId)>,
    exact_groups: HashMap<String, BTreeMap<String, Group>>,
    wild_groups: Vec<(String, String, Group)>,
}

impl Signals {
    pub(crate) fn register(
        &mut self,
        conn: ConnId,
        push: mpsc::Sender<Arc<[u8]>>,
        ctl: Arc<ConnCtl>,
    ) {
        self.conns.insert(
            conn,
            SigConn {
                push,
                ctl,
                subs: Vec::new(),
            },
        );
    }

    pub(crate) fn kill_all(&self) {
        for c in self.conns.values() {
            c.ctl.kill.trigger();
        }
    }

    pub(crate) fn listen(
        &mut self,
        conn: ConnId,
        pattern: &str,
        group: &str,
        max: usize,
    ) -> ListenResult {
        let Some(c) = self.conns.get_mut(&conn) else {
            return ListenResult::Ok;
        };
        // The real server counts first: at the limit even a duplicate
        // `listen` gets `error`; below it a duplicate is a no-op.
        if max > 0 && c.subs.len() >= max {
            return ListenResult::TooMany;
        }
        if c.subs.iter().any(|(p, g)| p == pattern && g == group) {
            return ListenResult::Ok;
        }
        c.subs.push((pattern.to_owned(), group.to_owned()));
        match (group.is_empty(), is_wild(pattern)) {
            (true, false) => self.exact.entry(pattern.to_owned()).or_default().push(conn),
            (true, true) => self.wild.push((pattern.to_owned(), conn)),
            (false, false) => self
                .exact_groups
                .entry(pattern.to_owned())
                .or_default()
                .entry(group.to_owned())
                .or_default()
                .members
                .push(conn),
            (false, true) => {
                if let Some((_, _, g)) = self
                    .wild_groups
                    .iter_mut()
                    .find(|(p, g, _)| p == pattern && g == group)
                {
                    g.members.push(conn);
                } else {
                    self.wild_groups.push((
                        pattern.to_owned(),
                        group.to_owned(),
                        Group {
                            members: vec![conn],
                            next: 0,
                        },
                    ));
                }
            }
        }
        ListenResult::Ok
    }

    pub(crate) fn unlisten(&mut self, conn: ConnId, pattern: &str, group: &str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(pos) = c.subs.iter().position(|(p, g)| p == pattern && g == group) else {
            return;
        };
        c.subs.swap_remove(pos);
        self.remove_index(conn, pattern, group);
    }

    fn remove_index(&mut self, conn: ConnId, pattern: &str, group: &str) {
        match (group.is_empty(), is_wild(pattern)) {
            (true, false) => {
                if let Some(v) = self.exact.get_mut(pattern) {
                    v.retain(|&c| c != conn);
                    if v.is_empty() {
                        self.exact.remove(pattern);
                    }
                }
            }
            (true, true) => {
                if let Some(pos) = self
                    .wild
                    .iter()
                    .position(|(p, c)| p == pattern && *c == conn)
                {
                    self.wild.remove(pos);
                }
            }
            (false, false) => {
                if let Some(groups) = self.exact_groups.get_mut(pattern) {
                    if let Some(g) = groups.get_mut(group) {
                        g.members.retain(|&c| c != conn);
                        if g.members.is_empty() {
                            groups.remove(group);
                        }
                    }
                    if groups.is_empty() {
                        self.exact_groups.remove(pattern);
                    }
                }
            }
            (false, true) => {
                if let Some(pos) = self
                    .wild_groups
                    .iter()
                    .position(|(p, g, _)| p == pattern && g == group)
                {
                    let g = &mut self.wild_groups[pos].2;
                    g.members.retain(|&c| c != conn);
                    if g.members.is_empty() {
                        self.wild_groups.remove(pos);
                    }
                }
            }
        }
    }

    pub(crate) fn unregister(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            for (p, g) in c.subs {
                self.remove_index(conn, &p, &g);
            }
        }
    }

    /// Delivers `sig <channel> <payload>`; returns the number of deliveries.
    pub(crate) fn signal(&mut self, channel: &str, payload: &str) -> usize {
        let mut line = Vec::with_capacity(channel.len() + payload.len() + 6);
        line.extend_from_slice(b"sig ");
        line.extend_from_slice(channel.as_bytes());
        line.push(b' ');
        line.extend_from_slice(payload.as_bytes());
        line.push(b'\n');
        let msg: Arc<[u8]> = line.into();

        let conns = &self.conns;
        let push = |id: ConnId| -> bool {
            let Some(c) = conns.get(&id) else {
                return false;
            };
            match c.push.try_send(msg.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // A consumer that does not read is dropped.
                    c.ctl.kill.trigger();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        };
        let deliver_group = |g: &mut Group| -> bool {
            let n = g.members.len();
            for i in 0..n {
                let idx = (g.next + i) % n;
                if push(g.members[idx]) {
                    g.next = (idx + 1) % n;
                    return true;
                }
            }
            false
        };

        let mut count = 0;
        let mut seen: HashSet<ConnId> = HashSet::new();
        if let Some(v) = self.exact.get(channel) {
            for &id in v {
                if seen.insert(id) && push(id) {
                    count += 1;
                }
            }
        }
        for (p, id) in &self.wild {
            if !seen.contains(id) && matches(p, channel) {
                seen.insert(*id);
                if push(*id) {
                    count += 1;
                }
            }
        }
        if let Some(groups) = self.exact_groups.get_mut(channel) {
            for g in groups.values_mut() {
                if deliver_group(g) {
                    count += 1;
                }
            }
        }
        for (p, _, g) in &mut self.wild_groups {
            if matches(p, channel) && deliver_group(g) {
                count += 1;
            }
        }
        count
    }

    pub(crate) fn stats(&self) -> Vec<SignalChannelInfo> {
        let mut out: Vec<SignalChannelInfo> = Vec::new();
        for (p, v) in &self.exact {
            out.push(SignalChannelInfo {
                pattern: p.clone(),
                group: String::new(),
                listeners: v.len(),
            });
        }
        let mut wild: BTreeMap<&str, usize> = BTreeMap::new();
        for (p, _) in &self.wild {
            *wild.entry(p).or_default() += 1;
        }
        for (p, n) in wild {
            out.push(SignalChannelInfo {
                pattern: p.to_owned(),
                group: String::new(),
                listeners: n,
            });
        }
        for (p, groups) in &self.exact_groups {
            for (g, grp) in groups {
                out.push(SignalChannelInfo {
                    pattern: p.clone(),
                    group: g.clone(),
                    listeners: grp.members.len(),
                });
            }
        }
        for (p, g, grp) in &self.wild_groups {
            out.push(SignalChannelInfo {
                pattern: p.clone(),
                group: g.clone(),
                listeners: grp.members.len(),
            });
        }
        out.sort_by(|a, b| (&a.pattern, &a.group).cmp(&(&b.pattern, &b.group)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "x"));
        assert!(matches("*.b.>", "a.b.c.d"));
        assert!(!matches("*.b.>", "a.c.d"));
    }
}
