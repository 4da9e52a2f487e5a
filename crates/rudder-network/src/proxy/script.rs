//! `nft -f` transactions: a full sync that replaces the whole table, and a
//! partial sync that rewrites only the chains, sets and map elements that
//! differ between what was applied and what is wanted. Every line knows
//! which Service port it came from, so that a line the kernel refuses can
//! be blamed on its Service.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::model::ServicePortName;
use super::render::{affinity_set_spec, base_table, ElementKey, Rendered};

/// The map and set elements of the whole table, each with its verdict
/// (none for set elements).
pub(crate) type Elements = BTreeMap<ElementKey, Option<String>>;

/// A transaction being written.
#[derive(Debug, Default)]
pub(crate) struct Script {
    text: String,
    /// Per line (0-based): the index of the Service port it belongs to in
    /// `names`, or `None` for the table's own lines.
    owners: Vec<Option<usize>>,
    names: Vec<ServicePortName>,
    index: BTreeMap<ServicePortName, usize>,
}

impl Script {
    fn line(&mut self, owner: Option<&ServicePortName>, line: &str) {
        let owner = owner.map(|name| match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.names.push(name.clone());
                self.index.insert(name.clone(), self.names.len() - 1);
                self.names.len() - 1
            }
        });
        self.text.push_str(line);
        self.text.push('\n');
        self.owners.push(owner);
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// How many commands (lines) it holds.
    pub(crate) fn len(&self) -> usize {
        self.owners.len()
    }

    /// The Service port that wrote line `number` (1-based, as nft reports).
    pub(crate) fn owner_of_line(&self, number: usize) -> Option<&ServicePortName> {
        let owner = (*self.owners.get(number.checked_sub(1)?)?)?;
        self.names.get(owner)
    }
}

/// The Service ports named by nft's error messages
/// (`/dev/stdin:LINE:COLUMNS: Error: …`), with the message of each.
pub(crate) fn blame(script: &Script, stderr: &str) -> BTreeMap<ServicePortName, String> {
    let mut blamed = BTreeMap::new();
    for line in stderr.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_file), Some(number), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue;
        };
        let message = rest
            .split_once("Error:")
            .map_or(rest, |(_, m)| m)
            .trim()
            .to_string();
        if let Some(owner) = script.owner_of_line(number) {
            blamed.entry(owner.clone()).or_insert(message);
        }
    }
    blamed
}

fn element_line(table: &str, key: &ElementKey, value: &Option<String>) -> String {
    match value {
        Some(value) => format!(
            "add element ip {table} {} {{ {} : {value} }}",
            key.collection, key.key
        ),
        None => format!(
            "add element ip {table} {} {{ {} }}",
            key.collection, key.key
        ),
    }
}

/// The whole table, replaced in one transaction: declared (so that the
/// delete never fails), deleted, declared again with the fixed part, then
/// every Service port's chains, sets, rules and elements. Packets see the
/// old table or the new one, never none.
pub(crate) fn full<'a>(
    table: &str,
    services: impl Iterator<Item = (&'a ServicePortName, &'a Rendered)> + Clone,
    elements: &Elements,
    owners: &BTreeMap<ElementKey, ServicePortName>,
) -> Script {
    let mut s = Script::default();
    s.line(None, &format!("table ip {table} {{}}"));
    s.line(None, &format!("delete table ip {table}"));
    s.line(None, &format!("table ip {table} {{"));
    for line in base_table() {
        s.line(None, &format!("\t{line}"));
    }
    s.line(None, "}");
    // Chains and sets first: rules may refer to any of them.
    for (name, rendered) in services.clone() {
        for chain in rendered.chains.keys() {
            s.line(Some(name), &format!("add chain ip {table} {chain}"));
        }
        for (set, timeout) in &rendered.sets {
            s.line(
                Some(name),
                &format!("add set ip {table} {set} {}", affinity_set_spec(*timeout)),
            );
        }
    }
    for (name, rendered) in services {
        for (chain, rules) in &rendered.chains {
            for rule in rules {
                s.line(Some(name), &format!("add rule ip {table} {chain} {rule}"));
            }
        }
    }
    for (key, value) in elements {
        s.line(owners.get(key), &element_line(table, key, value));
    }
    s
}

/// What a partial sync changes for one Service port: its old and new rules
/// (an absent side is an empty [`Rendered`]).
pub(crate) struct Change<'a> {
    pub name: &'a ServicePortName,
    pub old: &'a Rendered,
    pub new: &'a Rendered,
}

/// Rewrites only what differs, in an order the kernel accepts in one
/// transaction: elements that go or change are deleted first (nothing
/// points at the chains they named any more), new chains and sets are
/// declared, changed and departing chains are flushed (which also drops
/// their references to sets and other chains), then departing sets and
/// chains are deleted, and last the new rules and elements are added.
pub(crate) fn partial(
    table: &str,
    changes: &[Change<'_>],
    old_elements: &Elements,
    new_elements: &Elements,
    old_owners: &BTreeMap<ElementKey, ServicePortName>,
    new_owners: &BTreeMap<ElementKey, ServicePortName>,
) -> Script {
    let mut s = Script::default();
    for (key, value) in old_elements {
        if new_elements.get(key) != Some(value) {
            s.line(
                old_owners.get(key),
                &format!(
                    "delete element ip {table} {} {{ {} }}",
                    key.collection, key.key
                ),
            );
        }
    }
    // Per Service port: which chains to (re)write, which sets to replace.
    struct Plan<'a> {
        name: &'a ServicePortName,
        write: Vec<(&'a String, &'a Vec<String>)>,
        flush: Vec<&'a String>,
        delete_chains: Vec<&'a String>,
        add_sets: Vec<(&'a String, u32)>,
        delete_sets: Vec<&'a String>,
    }
    let mut plans = Vec::new();
    for change in changes {
        let (old, new) = (change.old, change.new);
        // A set whose timeout changes is replaced: every chain naming it
        // must be flushed first, so all chains of the port are rewritten.
        let sets_replaced = new
            .sets
            .iter()
            .any(|(set, t)| old.sets.get(set).is_some_and(|o| o != t));
        let mut plan = Plan {
            name: change.name,
            write: Vec::new(),
            flush: Vec::new(),
            delete_chains: Vec::new(),
            add_sets: Vec::new(),
            delete_sets: Vec::new(),
        };
        for (chain, rules) in &new.chains {
            match old.chains.get(chain) {
                Some(old_rules) if old_rules == rules && !sets_replaced => {}
                Some(_) => {
                    plan.flush.push(chain);
                    plan.write.push((chain, rules));
                }
                None => plan.write.push((chain, rules)),
            }
        }
        for chain in old.chains.keys() {
            if !new.chains.contains_key(chain) {
                plan.flush.push(chain);
                plan.delete_chains.push(chain);
            }
        }
        for (set, timeout) in &new.sets {
            match old.sets.get(set) {
                Some(t) if t == timeout => {}
                Some(_) => {
                    plan.delete_sets.push(set);
                    plan.add_sets.push((set, *timeout));
                }
                None => plan.add_sets.push((set, *timeout)),
            }
        }
        for set in old.sets.keys() {
            if !new.sets.contains_key(set) {
                plan.delete_sets.push(set);
            }
        }
        plans.push(plan);
    }
    let new_chains: BTreeSet<&String> = changes
        .iter()
        .flat_map(|c| {
            c.new
                .chains
                .keys()
                .filter(|k| !c.old.chains.contains_key(*k))
        })
        .collect();
    for plan in &plans {
        for (chain, _) in &plan.write {
            if new_chains.contains(chain) {
                s.line(Some(plan.name), &format!("add chain ip {table} {chain}"));
            }
        }
    }
    for plan in &plans {
        for chain in &plan.flush {
            s.line(Some(plan.name), &format!("flush chain ip {table} {chain}"));
        }
    }
    for plan in &plans {
        for set in &plan.delete_sets {
            s.line(Some(plan.name), &format!("delete set ip {table} {set}"));
        }
        for chain in &plan.delete_chains {
            s.line(Some(plan.name), &format!("delete chain ip {table} {chain}"));
        }
    }
    for plan in &plans {
        for (set, timeout) in &plan.add_sets {
            s.line(
                Some(plan.name),
                &format!("add set ip {table} {set} {}", affinity_set_spec(*timeout)),
            );
        }
    }
    for plan in &plans {
        for (chain, rules) in &plan.write {
            for rule in *rules {
                s.line(
                    Some(plan.name),
                    &format!("add rule ip {table} {chain} {rule}"),
                );
            }
        }
    }
    for (key, value) in new_elements {
        if old_elements.get(key) != Some(value) {
            s.line(new_owners.get(key), &element_line(table, key, value));
        }
    }
    s
}

/// A short human summary of a script for logs: its first lines.
pub(crate) fn preview(script: &Script, lines: usize) -> String {
    let mut out = String::new();
    for line in script.text().lines().take(lines) {
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;

    fn name(n: &str) -> ServicePortName {
        ServicePortName::new("default", n, "", Protocol::Tcp)
    }

    fn rendered(chains: &[(&str, &[&str])], sets: &[(&str, u32)]) -> Rendered {
        Rendered {
            chains: chains
                .iter()
                .map(|(c, rules)| (c.to_string(), rules.iter().map(|r| r.to_string()).collect()))
                .collect(),
            sets: sets.iter().map(|(s, t)| (s.to_string(), *t)).collect(),
            elements: Vec::new(),
        }
    }

    fn key(collection: &'static str, key: &str) -> ElementKey {
        ElementKey {
            collection,
            key: key.into(),
        }
    }

    #[test]
    fn partial_rewrites_only_what_changed_in_a_safe_order() {
        let a = name("a");
        let old = rendered(
            &[
                (
                    "svc-a",
                    &["numgen random mod 2 vmap { 0 : goto ep-1, 1 : goto ep-2 }"],
                ),
                ("ep-1", &["dnat to 1"]),
                ("ep-2", &["dnat to 2"]),
            ],
            &[],
        );
        let new = rendered(
            &[
                (
                    "svc-a",
                    &["numgen random mod 2 vmap { 0 : goto ep-1, 1 : goto ep-3 }"],
                ),
                ("ep-1", &["dnat to 1"]),
                ("ep-3", &["dnat to 3"]),
            ],
            &[],
        );
        let mut old_elements = Elements::new();
        old_elements.insert(
            key("service-ips", "10.43.0.1 . tcp . 80"),
            Some("goto svc-a".into()),
        );
        old_elements.insert(
            key("service-nodeports", "tcp . 30080"),
            Some("goto ext-a".into()),
        );
        let mut new_elements = old_elements.clone();
        new_elements.remove(&key("service-nodeports", "tcp . 30080"));
        new_elements.insert(
            key("service-nodeports", "tcp . 30081"),
            Some("goto ext-a".into()),
        );
        let owners: BTreeMap<ElementKey, ServicePortName> = old_elements
            .keys()
            .chain(new_elements.keys())
            .map(|k| (k.clone(), a.clone()))
            .collect();
        let s = partial(
            "t",
            &[Change {
                name: &a,
                old: &old,
                new: &new,
            }],
            &old_elements,
            &new_elements,
            &owners,
            &owners,
        );
        assert_eq!(
            s.text(),
            "delete element ip t service-nodeports { tcp . 30080 }\n\
             add chain ip t ep-3\n\
             flush chain ip t svc-a\n\
             flush chain ip t ep-2\n\
             delete chain ip t ep-2\n\
             add rule ip t ep-3 dnat to 3\n\
             add rule ip t svc-a numgen random mod 2 vmap { 0 : goto ep-1, 1 : goto ep-3 }\n\
             add element ip t service-nodeports { tcp . 30081 : goto ext-a }\n"
        );
        assert_eq!(s.owner_of_line(1), Some(&a));
        assert_eq!(s.owner_of_line(9), None);
    }

    #[test]
    fn an_element_whose_verdict_changes_is_deleted_then_added() {
        let mut old = Elements::new();
        old.insert(key("service-ips", "k"), Some("goto x".into()));
        let mut new = Elements::new();
        new.insert(key("service-ips", "k"), Some("goto y".into()));
        let s = partial("t", &[], &old, &new, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            s.text(),
            "delete element ip t service-ips { k }\nadd element ip t service-ips { k : goto y }\n"
        );
        assert!(partial("t", &[], &new, &new, &BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_changed_affinity_timeout_replaces_the_sets_and_rewrites_the_chains() {
        let a = name("a");
        let old = rendered(
            &[
                ("svc-a", &["ip saddr @aff-1 goto ep-1", "goto ep-1"]),
                ("ep-1", &["update @aff-1 { ip saddr }"]),
            ],
            &[("aff-1", 10800)],
        );
        let mut new = old.clone();
        new.sets.insert("aff-1".into(), 60);
        let s = partial(
            "t",
            &[Change {
                name: &a,
                old: &old,
                new: &new,
            }],
            &Elements::new(),
            &Elements::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let text = s.text();
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} in\n{text}"))
        };
        assert!(at("flush chain ip t ep-1") < at("delete set ip t aff-1"));
        assert!(at("flush chain ip t svc-a") < at("delete set ip t aff-1"));
        assert!(
            at("delete set ip t aff-1")
                < at("add set ip t aff-1 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }")
        );
        assert!(at("timeout 60s") < at("add rule ip t ep-1 update @aff-1"));
    }

    #[test]
    fn removing_a_service_deletes_its_elements_before_its_chains() {
        let a = name("a");
        let old = rendered(
            &[("svc-a", &["goto ep-1"]), ("ep-1", &["dnat to 1"])],
            &[("aff-1", 5)],
        );
        let mut old_elements = Elements::new();
        old_elements.insert(key("service-ips", "k"), Some("goto svc-a".into()));
        let owners = [(key("service-ips", "k"), a.clone())].into_iter().collect();
        let s = partial(
            "t",
            &[Change {
                name: &a,
                old: &old,
                new: &Rendered::default(),
            }],
            &old_elements,
            &Elements::new(),
            &owners,
            &BTreeMap::new(),
        );
        assert_eq!(
            s.text(),
            "delete element ip t service-ips { k }\n\
             flush chain ip t ep-1\n\
             flush chain ip t svc-a\n\
             delete set ip t aff-1\n\
             delete chain ip t ep-1\n\
             delete chain ip t svc-a\n"
        );
    }

    #[test]
    fn full_declares_deletes_and_refills_the_table() {
        let a = name("a");
        let r = rendered(
            &[("svc-a", &["goto ep-1"]), ("ep-1", &["dnat to 1"])],
            &[("aff-1", 5)],
        );
        let mut elements = Elements::new();
        elements.insert(key("service-ips", "k"), Some("goto svc-a".into()));
        let owners = [(key("service-ips", "k"), a.clone())].into_iter().collect();
        let s = full("t", [(&a, &r)].into_iter(), &elements, &owners);
        let text = s.text();
        assert!(
            text.starts_with("table ip t {}\ndelete table ip t\ntable ip t {\n"),
            "{text}"
        );
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} in\n{text}"))
        };
        assert!(at("add chain ip t ep-1") < at("add rule ip t svc-a goto ep-1"));
        assert!(at("add set ip t aff-1") < at("add rule ip t svc-a"));
        assert!(at("add rule ip t ep-1") < at("add element ip t service-ips { k : goto svc-a }"));
        let last = s.len();
        assert_eq!(s.owner_of_line(last), Some(&a));
        assert_eq!(s.owner_of_line(1), None);
        assert_eq!(s.owner_of_line(last + 1), None);
        assert_eq!(s.owner_of_line(0), None);
    }

    #[test]
    fn errors_are_blamed_on_the_lines_service() {
        let a = name("a");
        let r = rendered(&[("svc-a", &["goto ep-1"])], &[]);
        let s = full(
            "t",
            [(&a, &r)].into_iter(),
            &Elements::new(),
            &BTreeMap::new(),
        );
        let n = s.len();
        let stderr = format!(
            "/dev/stdin:{n}:20-30: Error: Could not process rule: No such file or directory\n\
             add rule ip t svc-a goto ep-1\n                   ^^^^^^^^^^\n\
             /dev/stdin:2:1-5: Error: something about the table\n"
        );
        let blamed = blame(&s, &stderr);
        assert_eq!(blamed.len(), 1);
        assert_eq!(
            blamed[&a],
            "Could not process rule: No such file or directory"
        );
    }
}
