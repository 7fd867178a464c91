//! A trace as an indented tree: one line per span, children under their parent in start
//! order, each with its service, name, duration and key attributes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use super::Span;

/// Attributes worth a glance on the tree line (others stay in the JSON lines).
const KEY_ATTRS: &[&str] = &[
    "uri",
    "x_request_id",
    "worker_id",
    "instance_id",
    "component",
    "phase",
    "rid",
    "bootstrap_room",
    "batch_size",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "input_tokens",
    "output_tokens",
    "ttft_ms",
];

/// Render the spans of one trace. Spans whose parent is not among them are roots; a span
/// that is its own parent, or part of a parent cycle (which only a broken or hostile exporter
/// sends), is printed once, as a root, never followed again.
pub fn render(spans: &[Span]) -> String {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut roots = vec![];
    for (i, s) in spans.iter().enumerate() {
        let p = s.parent_span_id.as_str();
        if p.is_empty() || p == s.span_id || !ids.contains(p) {
            roots.push(i);
        } else {
            children.entry(p).or_default().push(i);
        }
    }
    for v in children.values_mut() {
        v.sort_by_key(|&i| spans[i].start_ns);
    }
    roots.sort_by_key(|&i| spans[i].start_ns);
    let mut out = String::new();
    if let Some(&r) = roots.first() {
        let _ = writeln!(out, "trace {} ({} spans)", spans[r].trace_id, spans.len());
    }
    let mut seen = vec![false; spans.len()];
    let walk_from = |out: &mut String, seen: &mut Vec<bool>, root: usize| {
        // Depth-first with an explicit stack: no recursion to overflow, each span once.
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            line(out, &spans[i], depth);
            if let Some(cs) = children.get(spans[i].span_id.as_str()) {
                stack.extend(cs.iter().rev().map(|&c| (c, depth + 1)));
            }
        }
    };
    for r in roots {
        walk_from(&mut out, &mut seen, r);
    }
    // Spans only reachable through a parent cycle.
    for i in 0..spans.len() {
        if !seen[i] {
            walk_from(&mut out, &mut seen, i);
        }
    }
    out
}

fn line(out: &mut String, s: &Span, depth: usize) {
    let mut attrs = String::new();
    for k in KEY_ATTRS {
        if let Some(v) = s.attributes.get(*k) {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let _ = write!(attrs, " {k}={v}");
        }
    }
    let _ = writeln!(
        out,
        "{:indent$}{} [{}] {:.2} ms{}",
        "",
        s.name,
        s.service,
        s.duration_ms(),
        attrs,
        indent = 2 * depth + 2
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn span(name: &str, id: &str, parent: &str, start: u64, end: u64) -> Span {
        Span {
            service: "svc".into(),
            name: name.into(),
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            start_ns: start,
            end_ns: end,
            attributes: BTreeMap::from([("rid".to_string(), serde_json::json!("abc"))]),
            events: vec![],
            links: vec![],
        }
    }

    #[test]
    fn children_nest_in_start_order_and_orphans_are_roots() {
        let spans = vec![
            span("late child", "c2", "r", 3_000_000, 4_000_000),
            span("root", "r", "", 0, 5_000_000),
            span("early child", "c1", "r", 1_000_000, 2_000_000),
            span("grandchild", "g", "c1", 1_500_000, 1_600_000),
            span("orphan", "o", "missing", 6_000_000, 7_000_000),
        ];
        let out = render(&spans);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "trace t1 (5 spans)");
        assert_eq!(lines[1], "  root [svc] 5.00 ms rid=abc");
        assert_eq!(lines[2], "    early child [svc] 1.00 ms rid=abc");
        assert_eq!(lines[3], "      grandchild [svc] 0.10 ms rid=abc");
        assert_eq!(lines[4], "    late child [svc] 1.00 ms rid=abc");
        assert_eq!(lines[5], "  orphan [svc] 1.00 ms rid=abc");
    }

    #[test]
    fn self_parents_duplicates_and_cycles_end() {
        let spans = vec![
            span("root", "r", "", 0, 5),
            span("self", "s", "s", 1, 2),
            span("dup of root", "r", "r", 2, 3),
            span("a", "a", "b", 3, 4),
            span("b", "b", "a", 4, 5),
        ];
        let out = render(&spans);
        assert_eq!(out.lines().count(), 1 + spans.len(), "{out}");
        for name in ["root", "self", "dup of root", "a ", "b "] {
            assert!(out.contains(name), "{name}: {out}");
        }
    }
}
