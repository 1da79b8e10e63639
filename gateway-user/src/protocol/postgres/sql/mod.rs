//! Statement classification with PostgreSQL's own parser: what a SQL string does, which
//! relations it touches, which functions it calls, which settings it changes and where it uses
//! columns, so policy can be decided without talking to PostgreSQL and without reading the text
//! any differently from the server.

mod ffi;
mod kinds;
pub(crate) mod scan;
mod walk;

use serde::Serialize;
use serde_json::Value;

pub use walk::SQL_TEXT_FUNCTIONS;
use walk::{Walker, node, string_node};

pub use crate::sql::StatementKind;

/// A column the statement returns as it is: `col`, `t.col` (with its alias, if any), or a
/// star (`column: None`), whose columns keep their own names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub column: Option<String>,
    pub alias: Option<String>,
}

/// Where a statement uses columns, for masking by provenance: a masked column may only leave
/// as a plain output column (masked there), never through an expression, a filter, a copy
/// into another table or a whole-row value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ColumnUse {
    pub outputs: Vec<Output>,
    /// Columns referenced anywhere else (expressions, filters, joins, subqueries, SET lists).
    pub elsewhere: Vec<String>,
    /// A whole-row value (`t`, `t.*` inside an expression, a star in a subquery).
    pub whole_rows: bool,
    /// A relation or subquery given new column names (`AS x(a, b)`).
    pub renamed: bool,
    /// UNION / INTERSECT / EXCEPT at the top: output names come from one branch only.
    pub set_operation: bool,
    /// ORDER BY / GROUP BY / DISTINCT ON by output position (`ORDER BY 1`).
    pub positional: bool,
    /// NATURAL JOIN: compares every column two relations share.
    pub natural_join: bool,
}

/// What a statement does to the session's prepared statements and portals (cursors), which
/// the gateway tracks so that EXECUTE and FETCH are judged by what was declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum SessionOp {
    Prepare {
        name: String,
    },
    Declare {
        name: String,
        holdable: bool,
    },
    Execute {
        name: String,
    },
    Fetch {
        name: String,
    },
    /// `CLOSE name`, or `CLOSE ALL` (None).
    ClosePortal {
        name: Option<String>,
    },
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` (None).
    Deallocate {
        name: Option<String>,
    },
    DiscardAll,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementInfo {
    pub kind: StatementKind,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub functions: Vec<String>,
    /// Reads values of relations it does not name (statistics views, functions that take a
    /// relation by name): table conditions treat it as touching every relation.
    pub reads_everything: bool,
    pub without_where: bool,
    pub copy_program: bool,
    /// `COPY ... TO`: rows leave as CopyData, which masking does not rewrite.
    pub copy_out: bool,
    /// Whether the description depends on a literal's value, so that the same statement with
    /// other values could be described otherwise (and must not be judged by its shape).
    pub reads_literals: bool,
    /// Settings it changes, lowercased as PostgreSQL matches them (`*`: a computed name).
    pub settings: Vec<String>,
    /// Whether it runs SQL text the gateway cannot judge ([`SQL_TEXT_FUNCTIONS`], `DO`).
    pub runs_sql_text: bool,
    /// A form the gateway does not follow, with why (`CREATE TABLE ... AS EXECUTE`).
    pub unsupported: Option<&'static str>,
    pub columns: ColumnUse,
    pub session: Option<SessionOp>,
    /// The statement as the agent wrote it (without a trailing `;`).
    pub text: String,
    /// The same with every literal as `?`, comments and blank runs as one space.
    pub redacted: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse SQL: {message}")]
pub struct ParseError {
    pub message: String,
}

/// How the session resolves unqualified names: the search_path the gateway pins upstream.
pub const DEFAULT_SEARCH_PATH: &[&str] = &["public"];

/// Parses `sql` (possibly several `;`-separated statements) with PostgreSQL's grammar and
/// describes each, resolving unqualified names along `search_path`. Anything the server's
/// parser rejects, or a statement type the classifier does not know, is an error: the caller
/// must fail closed rather than guess.
pub fn classify(sql: &str, search_path: &[String]) -> Result<Vec<StatementInfo>, ParseError> {
    let json = ffi::parse_json(sql)?;
    let tree: Value = serde_json::from_str(&json).map_err(|e| ParseError {
        message: format!("statement too deeply nested for the gateway ({e})"),
    })?;
    let stmts = tree
        .get("stmts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(stmts.len());
    for raw in stmts {
        let start = raw
            .get("stmt_location")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let len = raw.get("stmt_len").and_then(Value::as_u64).unwrap_or(0) as usize;
        let end = if len == 0 { sql.len() } else { start + len };
        let text = sql
            .get(start..end.min(sql.len()))
            .unwrap_or(sql)
            .trim()
            .trim_end_matches(';')
            .trim_end();
        let Some(stmt) = raw.get("stmt") else {
            continue;
        };
        out.push(describe(stmt, text, search_path)?);
    }
    Ok(out)
}

/// [`classify`] with the default search_path, for tests and benches.
pub fn classify_default(sql: &str) -> Result<Vec<StatementInfo>, ParseError> {
    let path: Vec<String> = DEFAULT_SEARCH_PATH
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    classify(sql, &path)
}

fn unknown(what: &str) -> ParseError {
    ParseError {
        message: format!("the gateway does not know the statement type {what}"),
    }
}

fn describe(stmt: &Value, text: &str, search_path: &[String]) -> Result<StatementInfo, ParseError> {
    let mut w = Walker::new(search_path);
    let mut info = StatementInfo {
        kind: StatementKind::Other,
        reads: Vec::new(),
        writes: Vec::new(),
        functions: Vec::new(),
        reads_everything: false,
        without_where: false,
        copy_program: false,
        copy_out: false,
        reads_literals: false,
        settings: Vec::new(),
        runs_sql_text: false,
        unsupported: None,
        columns: ColumnUse::default(),
        session: None,
        text: text.to_owned(),
        redacted: scan::redacted(text),
    };
    info.kind = statement(&mut w, stmt, &mut info)?;
    w.finish();
    let f = w.found;
    info.reads = dedup(f.reads);
    info.writes = dedup(f.writes);
    info.functions = dedup(f.functions);
    info.reads_everything |= f.reads_everything;
    info.without_where |= f.without_where;
    info.reads_literals |= f.reads_literals;
    info.settings = dedup(f.settings);
    info.runs_sql_text |= f.runs_sql_text;
    info.columns = f.columns;
    info.columns.elsewhere = dedup(info.columns.elsewhere);
    Ok(info)
}

/// Walks one top-level statement and returns its kind; statements that wrap another
/// (EXPLAIN, PREPARE, DECLARE) describe the one inside.
fn statement(
    w: &mut Walker,
    stmt: &Value,
    info: &mut StatementInfo,
) -> Result<StatementKind, ParseError> {
    use StatementKind as K;
    let (name, body) = node(stmt).ok_or_else(|| unknown("(unwrapped)"))?;
    let (kind, role) = kinds::statement(name).ok_or_else(|| unknown(name))?;
    let field = |k: &str| body.get(k).filter(|v| !v.is_null());
    let text_of = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(match name {
        "SelectStmt" => {
            w.select(body, true);
            w.found.first_dml.unwrap_or(if w.found.select_into {
                K::Create
            } else {
                K::Select
            })
        }
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
            w.dml(name, body, true);
            kind
        }
        "CopyStmt" => {
            let from = body.get("is_from").and_then(Value::as_bool) == Some(true);
            info.copy_out = !from;
            info.copy_program = body.get("is_program").and_then(Value::as_bool) == Some(true);
            if let Some(Value::Object(rel)) = field("relation") {
                w.visit(
                    &Value::Object(rel.clone()),
                    if from { kinds::Role::Write } else { role },
                );
            }
            for (k, v) in body {
                if k != "relation" {
                    w.visit(v, kinds::Role::Read);
                }
            }
            kind
        }
        "ExplainStmt" => {
            let options = field("options").and_then(Value::as_array);
            let mut analyze = false;
            for o in options.into_iter().flatten() {
                let Some(("DefElem", d)) = node(o) else {
                    continue;
                };
                let arg = d.get("arg").filter(|v| !v.is_null());
                info.reads_literals |= arg.is_some();
                if matches!(
                    d.get("defname").and_then(Value::as_str),
                    Some("analyze" | "analyse")
                ) {
                    analyze = !arg.is_some_and(is_false);
                }
            }
            let inner = field("query").ok_or_else(|| unknown("EXPLAIN without a query"))?;
            let inner_kind = statement(w, inner, info)?;
            if analyze {
                inner_kind
            } else {
                // A plain EXPLAIN only plans: nothing it names is written or executed, but
                // the names still count as references so table rules see them.
                let writes = std::mem::take(&mut w.found.writes);
                w.found.reads.extend(writes);
                w.found.without_where = false;
                info.copy_out = false;
                K::Explain
            }
        }
        "PrepareStmt" => {
            info.session = Some(SessionOp::Prepare {
                name: text_of("name").unwrap_or_default(),
            });
            w.visit(field("argtypes").unwrap_or(&Value::Null), kinds::Role::Read);
            let inner = field("query").ok_or_else(|| unknown("PREPARE without a query"))?;
            statement(w, inner, info)?
        }
        "DeclareCursorStmt" => {
            // CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h: the cursor outlives its
            // transaction.
            const CURSOR_OPT_HOLD: u64 = 0x0020;
            let options = body.get("options").and_then(Value::as_u64).unwrap_or(0);
            info.session = Some(SessionOp::Declare {
                name: text_of("portalname").unwrap_or_default(),
                holdable: options & CURSOR_OPT_HOLD != 0,
            });
            let inner = field("query").ok_or_else(|| unknown("DECLARE without a query"))?;
            statement(w, inner, info)?
        }
        "ExecuteStmt" => {
            info.session = Some(SessionOp::Execute {
                name: text_of("name").unwrap_or_default(),
            });
            w.visit_all(body);
            kind
        }
        "FetchStmt" => {
            info.session = Some(SessionOp::Fetch {
                name: text_of("portalname").unwrap_or_default(),
            });
            kind
        }
        "ClosePortalStmt" => {
            info.session = Some(SessionOp::ClosePortal {
                name: text_of("portalname").filter(|n| !n.is_empty()),
            });
            kind
        }
        "DeallocateStmt" => {
            info.session = Some(SessionOp::Deallocate {
                name: text_of("name").filter(|n| !n.is_empty()),
            });
            kind
        }
        "DiscardStmt" => {
            if body.get("target").and_then(Value::as_str) == Some("DISCARD_ALL") {
                info.session = Some(SessionOp::DiscardAll);
            }
            kind
        }
        "DoStmt" => {
            info.runs_sql_text = true;
            kind
        }
        "VariableSetStmt" => {
            w.visit(stmt, role);
            let name = body.get("name").and_then(Value::as_str).unwrap_or("");
            let name = name.to_ascii_lowercase();
            let setting_kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
            if matches!(name.as_str(), "role" | "session_authorization") {
                // Who the session is: its own kind, for rules to allow or not.
                w.found.settings.retain(|s| *s != name);
                K::Role
            } else {
                // Setting a pinned setting to the value the gateway pins (or back to the
                // session's default, which is the pinned value) changes nothing.
                let args = body.get("args").and_then(Value::as_array);
                let value = match args.map(Vec::as_slice) {
                    Some([one]) => constant_text(one),
                    _ => None,
                };
                if let Some(v) = &value {
                    info.reads_literals = true;
                    let v = v.to_ascii_lowercase();
                    let keeps = match name.as_str() {
                        "standard_conforming_strings" => matches!(v.as_str(), "on" | "true"),
                        "client_encoding" => matches!(v.as_str(), "utf8" | "utf-8"),
                        _ => false,
                    };
                    if keeps {
                        w.found.settings.retain(|s| *s != name);
                    }
                }
                if setting_kind == "VAR_RESET"
                    && matches!(
                        name.as_str(),
                        "standard_conforming_strings" | "client_encoding"
                    )
                {
                    w.found.settings.retain(|s| *s != name);
                }
                kind
            }
        }
        "DropStmt" => {
            let relation_objects = matches!(
                body.get("removeType").and_then(Value::as_str),
                Some(
                    "OBJECT_TABLE"
                        | "OBJECT_VIEW"
                        | "OBJECT_MATVIEW"
                        | "OBJECT_INDEX"
                        | "OBJECT_SEQUENCE"
                        | "OBJECT_FOREIGN_TABLE"
                )
            );
            let on_relation = matches!(
                body.get("removeType").and_then(Value::as_str),
                Some("OBJECT_RULE" | "OBJECT_TRIGGER" | "OBJECT_POLICY")
            );
            for o in field("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(("List", list)) = node(o) else {
                    continue;
                };
                let mut parts: Vec<&str> = list
                    .get("items")
                    .and_then(Value::as_array)
                    .map(|i| i.iter().filter_map(string_node).collect())
                    .unwrap_or_default();
                if on_relation {
                    parts.pop();
                } else if !relation_objects {
                    continue;
                }
                let (schema, rel) = match parts.as_slice() {
                    [.., s, r] => (*s, *r),
                    [r] => ("", *r),
                    [] => continue,
                };
                let names = w.relation_names(schema, rel);
                w.found.writes.extend(names);
            }
            kind
        }
        "GrantStmt" => {
            // GRANT ... ON ALL TABLES IN SCHEMA s names no relation but reaches every one.
            if body.get("targtype").and_then(Value::as_str) == Some("ACL_TARGET_ALL_IN_SCHEMA") {
                info.reads_everything = true;
            }
            let revoke = body.get("is_grant").and_then(Value::as_bool) != Some(true);
            w.visit_all(body);
            if revoke { K::Revoke } else { K::Grant }
        }
        "CreateTableAsStmt" => {
            if matches!(field("query").and_then(node), Some(("ExecuteStmt", _))) {
                // It would run a prepared statement whose judgement the classifier (pure,
                // without the session's names) does not have, and copy its rows.
                info.unsupported =
                    Some("CREATE TABLE ... AS EXECUTE runs a prepared statement unseen");
            }
            if let Some(Value::Object(into)) = field("into")
                && let Some(rel) = into.get("rel")
            {
                w.visit(rel, kinds::Role::Write);
            }
            w.visit(field("query").unwrap_or(&Value::Null), kinds::Role::Read);
            kind
        }
        _ => {
            w.visit(stmt, role);
            kind
        }
    })
}

/// The text of a string constant or a bare word (`on`, `'UTF8'`), as SET's value.
fn constant_text(v: &Value) -> Option<String> {
    match node(v)? {
        ("A_Const", c) => c
            .get("sval")
            .and_then(Value::as_object)
            .and_then(|s| s.get("sval"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ("String", s) => s.get("sval").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Only an explicit false turns an EXPLAIN option off (the values PostgreSQL's parse_bool
/// reads as false in full); anything unclear counts as on, so `EXPLAIN (ANALYZE <odd>)` is
/// still judged as execution.
fn is_false(arg: &Value) -> bool {
    let text = match node(arg) {
        Some(("String", s)) => s.get("sval").and_then(Value::as_str).unwrap_or(""),
        Some(("Integer", i)) => {
            return i.get("ival").and_then(Value::as_i64).unwrap_or(0) == 0;
        }
        _ => return false,
    };
    matches!(
        text.to_ascii_lowercase().as_str(),
        "false" | "off" | "0" | "no"
    )
}

fn dedup(mut names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

#[cfg(test)]
mod tests;
