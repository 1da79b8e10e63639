//! One walk over a statement's whole parse tree (libpg_query's JSON), collecting what the
//! policy judges: relations read and written, functions called, settings changed, and where
//! columns are used (for masking by provenance).
//!
//! The walk is generic: it descends into every object and array, so a relation or a call in a
//! node type this file never names is still found. Nodes in `Node *` fields come wrapped as
//! `{"RangeVar": {..}}`; typed fields (`InsertStmt.relation`, `CallStmt.funccall`,
//! `AlterRoleSetStmt.setstmt`) come bare, so a RangeVar is also recognised by its fields
//! (`relname` + `relpersistence`), a FuncCall by `funcname` + `funcformat` and a
//! VariableSetStmt by its `VAR_*` kind.

use serde_json::{Map, Value};

use super::kinds::Role;
use super::{ColumnUse, Output, StatementKind as K};

/// Statistics and activity views: they hold other tables' values (most common values,
/// histograms) or other sessions' statements, so reading one counts as reading everything.
pub(crate) const STATISTICS_RELATIONS: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
    "pg_stat_statements",
    "pg_stat_activity",
    "pg_prepared_statements",
    "pg_cursors",
];

/// Functions that read a relation, schema, database or cursor named by a value: the
/// relation is out of the judge's sight, so a call counts as reading everything.
pub(crate) const RELATION_BY_NAME_FUNCTIONS: &[&str] = &[
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    // The function forms of the activity and statistics views: other sessions' statements.
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_statements",
    "pg_cursor",
    "pg_prepared_statement",
];

/// Functions of a whole row: PostgreSQL reads `rel.f` as `f(rel)` (attribute notation), so a
/// qualified "column" of one of these names is a whole-row value, and masking by column
/// cannot follow it.
pub(crate) const ROW_FUNCTIONS: &[&str] = &[
    "row_to_json",
    "to_json",
    "to_jsonb",
    "record_out",
    "record_send",
    "hstore",
    "jsonb_populate_record",
    "json_populate_record",
];

/// Functions that run SQL given to them as text (here or on another server): the statement
/// inside is out of the judge's sight, so a statement calling one is refused.
pub const SQL_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
];

/// What one statement's walk found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub functions: Vec<String>,
    pub reads_everything: bool,
    pub first_dml: Option<K>,
    pub select_into: bool,
    pub without_where: bool,
    pub reads_literals: bool,
    pub settings: Vec<String>,
    pub runs_sql_text: bool,
    pub columns: ColumnUse,
    single_names: Vec<String>,
    range_names: Vec<String>,
}

pub(crate) struct Walker<'a> {
    search_path: &'a [String],
    pub found: Found,
}

fn get<'v>(o: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn str_of<'v>(o: &'v Map<String, Value>, key: &str) -> &'v str {
    o.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The single `{"Name": {..}}` wrapper of a node, if `v` is one.
pub(crate) fn node(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let (k, body) = o.iter().next()?;
    k.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some(())?;
    Some((k.as_str(), body.as_object()?))
}

/// The `sval` of a `{"String": {"sval": ..}}` node.
pub(crate) fn string_node(v: &Value) -> Option<&str> {
    match node(v)? {
        ("String", body) => Some(str_of(body, "sval")),
        _ => None,
    }
}

/// A list of String nodes joined with dots (qualified names).
fn dotted(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|items| items.iter().filter_map(string_node).collect())
        .unwrap_or_default()
}

impl<'a> Walker<'a> {
    pub fn new(search_path: &'a [String]) -> Self {
        Walker {
            search_path,
            found: Found::default(),
        }
    }

    /// Descends into anything, judging each node it meets by its type.
    pub fn visit(&mut self, v: &Value, role: Role) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.visit(i, role)),
            Value::Object(o) => {
                if let Some((name, body)) = node(v) {
                    self.node(name, body, role);
                } else if o.contains_key("relname") && o.contains_key("relpersistence") {
                    self.range_var(o, role);
                } else if o.contains_key("funcname") && o.contains_key("funcformat") {
                    self.func_call(o);
                } else if o.contains_key("limitOption") && o.contains_key("op") {
                    // A SelectStmt in a typed field (a set operation's branches).
                    self.select(o, false);
                } else if o
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.starts_with("VAR_"))
                {
                    // A VariableSetStmt in a typed field (ALTER ROLE/DATABASE/SYSTEM ... SET).
                    self.node("VariableSetStmt", o, role);
                } else {
                    if o.contains_key("aliasname") {
                        self.alias(o);
                    }
                    o.values().for_each(|x| self.visit(x, role));
                }
            }
            _ => {}
        }
    }

    fn node(&mut self, name: &str, body: &Map<String, Value>, role: Role) {
        match name {
            "RangeVar" => self.range_var(body, role),
            "FuncCall" => self.func_call(body),
            "ColumnRef" => self.column_ref(body, None),
            "SelectStmt" => self.select(body, false),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.dml(name, body, false),
            "VariableSetStmt" => {
                let setting = str_of(body, "name");
                if !setting.is_empty() {
                    self.found.settings.push(setting.to_ascii_lowercase());
                }
                self.visit_fields(body, role, &[]);
            }
            "CommonTableExpr" => {
                self.found.columns.renamed |= get(body, "aliascolnames").is_some();
                self.found
                    .range_names
                    .push(str_of(body, "ctename").to_owned());
                self.visit_fields(body, Role::Read, &[]);
            }
            // A constant holds no relation, call or column.
            "A_Const" => {}
            // ON CONFLICT (col), index columns: uses of those columns.
            "IndexElem" => {
                if let Some(name) = get(body, "name").and_then(Value::as_str) {
                    self.found.columns.elsewhere.push(name.to_owned());
                }
                self.visit_fields(body, role, &[]);
            }
            "JoinExpr" => {
                self.found.columns.natural_join |=
                    body.get("isNatural").and_then(Value::as_bool) == Some(true);
                // JOIN ... USING (col): the join compares those columns.
                for name in dotted(get(body, "usingClause")) {
                    self.found.columns.elsewhere.push(name.to_owned());
                }
                self.visit_fields(body, role, &[]);
            }
            _ => self.visit_fields(body, role, &[]),
        }
    }

    /// Every field of a statement node, as reads.
    pub fn visit_all(&mut self, body: &Map<String, Value>) {
        self.visit_fields(body, Role::Read, &[]);
    }

    fn visit_fields(&mut self, body: &Map<String, Value>, role: Role, skip: &[&str]) {
        for (k, v) in body {
            if !skip.contains(&k.as_str()) {
                self.visit(v, role);
            }
        }
    }

    /// `db.schema.rel`, `schema.rel` or `rel` as the server resolves it for this session:
    /// the catalog part can only name the current database; an unqualified name is looked
    /// up in pg_catalog first (every catalog relation is named `pg_*`), then in the pinned
    /// search_path, so it stands for each schema it could resolve to.
    pub fn relation_names(&self, schema: &str, rel: &str) -> Vec<String> {
        if !schema.is_empty() {
            return vec![format!("{schema}.{rel}")];
        }
        let mut names: Vec<String> = self
            .search_path
            .iter()
            .map(|s| format!("{s}.{rel}"))
            .collect();
        if rel.starts_with("pg_") {
            names.insert(0, format!("pg_catalog.{rel}"));
        }
        names
    }

    fn range_var(&mut self, o: &Map<String, Value>, role: Role) {
        let rel = str_of(o, "relname");
        let names = self.relation_names(str_of(o, "schemaname"), rel);
        self.found.reads_everything |= STATISTICS_RELATIONS.contains(&rel);
        match role {
            Role::Read => self.found.reads.extend(names),
            Role::Write => self.found.writes.extend(names),
        }
        self.found.range_names.push(rel.to_owned());
        if let Some(Value::Object(alias)) = get(o, "alias") {
            self.alias(alias);
        }
    }

    fn alias(&mut self, alias: &Map<String, Value>) {
        self.found.columns.renamed |= get(alias, "colnames").is_some();
        self.found
            .range_names
            .push(str_of(alias, "aliasname").to_owned());
    }

    fn func_call(&mut self, o: &Map<String, Value>) {
        let parts = dotted(get(o, "funcname"));
        // The bare name, and each schema it may resolve to (pg_catalog first, then the pinned
        // search_path), so rules may name a function either way.
        let (name, qualified) = match parts.as_slice() {
            ["pg_catalog", f] => ((*f).to_owned(), vec![format!("pg_catalog.{f}")]),
            [f] => (
                (*f).to_owned(),
                std::iter::once("pg_catalog")
                    .chain(self.search_path.iter().map(String::as_str))
                    .map(|s| format!("{s}.{f}"))
                    .collect(),
            ),
            _ => (parts.join("."), Vec::new()),
        };
        if name == "set_config" {
            self.set_config(o);
        }
        self.found.runs_sql_text |= SQL_TEXT_FUNCTIONS.contains(&name.as_str());
        self.found.reads_everything |= RELATION_BY_NAME_FUNCTIONS.contains(&name.as_str());
        self.found.functions.push(name);
        self.found.functions.extend(qualified);
        self.visit_fields(o, Role::Read, &["funcname"]);
    }

    /// `set_config(name, ...)` changes the setting its first argument names: a string
    /// constant is read (so the statement is not judged by shape), anything computed could
    /// name any setting.
    fn set_config(&mut self, o: &Map<String, Value>) {
        let first = get(o, "args")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let constant = first.and_then(node).and_then(|(n, body)| {
            (n == "A_Const")
                .then(|| get(body, "sval"))
                .flatten()
                .and_then(Value::as_object)
                .map(|s| str_of(s, "sval"))
        });
        self.found.reads_literals = true;
        self.found.settings.push(match constant {
            Some(name) => name.trim().to_ascii_lowercase(),
            None => "*".into(),
        });
    }

    /// A column reference; `output` carries the alias of a plain top-level output column.
    fn column_ref(&mut self, o: &Map<String, Value>, output: Option<Option<String>>) {
        let fields = get(o, "fields").and_then(Value::as_array);
        let last = fields.and_then(|f| f.last());
        let star = last.and_then(node).is_some_and(|(n, _)| n == "A_Star");
        let column = last.and_then(string_node).map(str::to_owned);
        match (output, star) {
            (Some(_), true) => self.found.columns.outputs.push(Output {
                column: None,
                alias: None,
            }),
            (Some(alias), false) => self.found.columns.outputs.push(Output {
                column: column.clone(),
                alias,
            }),
            (None, true) => self.found.columns.whole_rows = true,
            (None, false) => {
                if let Some(c) = &column {
                    self.found.columns.elsewhere.push(c.clone());
                }
            }
        }
        // `rel.f` may be `f(rel)`: a call of a function of the whole row.
        if fields.is_some_and(|f| f.len() > 1)
            && let Some(c) = &column
            && ROW_FUNCTIONS.contains(&c.as_str())
        {
            self.found.columns.whole_rows = true;
            self.found.functions.push(c.clone());
        }
        if fields.is_some_and(|f| f.len() == 1)
            && let Some(c) = column
        {
            self.found.single_names.push(c);
        }
    }

    /// A target list entry: `top` lists are what the statement returns.
    fn targets(&mut self, list: Option<&Value>, top: bool) {
        for t in list.and_then(Value::as_array).into_iter().flatten() {
            let Some(("ResTarget", rt)) = node(t) else {
                self.visit(t, Role::Read);
                continue;
            };
            let val = get(rt, "val");
            match val.and_then(node) {
                Some(("ColumnRef", cr)) if top => {
                    let alias = get(rt, "name").and_then(Value::as_str).map(str::to_owned);
                    self.column_ref(cr, Some(alias));
                }
                _ => {
                    if let Some(v) = val {
                        self.visit(v, Role::Read);
                    }
                }
            }
            if let Some(ind) = get(rt, "indirection") {
                self.visit(ind, Role::Read);
            }
        }
    }

    pub fn select(&mut self, o: &Map<String, Value>, top: bool) {
        if str_of(o, "op") != "SETOP_NONE" && !str_of(o, "op").is_empty() {
            self.found.columns.set_operation |= top;
        }
        let into = get(o, "intoClause").and_then(Value::as_object);
        if let Some(into) = into {
            self.found.select_into = true;
            if let Some(Value::Object(rel)) = get(into, "rel") {
                self.range_var(rel, Role::Write);
            }
        }
        self.targets(get(o, "targetList"), top && into.is_none());
        let positional = |v: Option<&Value>| {
            v.and_then(Value::as_array).is_some_and(|items| {
                items.iter().any(|i| {
                    let i = match node(i) {
                        Some(("SortBy", sb)) => get(sb, "node"),
                        _ => Some(i),
                    };
                    matches!(i.and_then(node), Some(("A_Const", _)))
                })
            })
        };
        self.found.columns.positional |= positional(get(o, "sortClause"))
            || positional(get(o, "groupClause"))
            || positional(get(o, "distinctClause"));
        self.visit_fields(o, Role::Read, &["targetList", "intoClause"]);
    }

    pub fn dml(&mut self, name: &str, o: &Map<String, Value>, top: bool) {
        let kind = match name {
            "InsertStmt" => K::Insert,
            "UpdateStmt" => K::Update,
            "DeleteStmt" => K::Delete,
            _ => K::Merge,
        };
        self.found.first_dml.get_or_insert(kind);
        let before = self.found.writes.len();
        if let Some(Value::Object(rel)) = get(o, "relation") {
            self.range_var(rel, Role::Write);
        }
        if matches!(kind, K::Update | K::Delete) && !restricts_rows(get(o, "whereClause")) {
            self.found.without_where = true;
        }
        if get(o, "returningList").is_some() {
            // RETURNING hands the target's rows back: a read of it too.
            let target = self.found.writes[before..].to_vec();
            self.found.reads.extend(target);
            self.targets(get(o, "returningList"), top);
        }
        // UPDATE's SET list: each value is an expression over the row.
        self.targets(get(o, "targetList"), false);
        self.visit_fields(o, Role::Read, &["relation", "returningList", "targetList"]);
    }

    /// Settles what needs the whole statement: a one-part column name that is also a
    /// relation or alias in the statement may be a whole-row reference.
    pub fn finish(&mut self) {
        let f = &mut self.found;
        f.columns.whole_rows |= f
            .single_names
            .iter()
            .any(|n| f.range_names.iter().any(|r| r == n));
    }
}

/// Whether a WHERE clause can restrict which rows a write touches: it must exist and read a
/// column (or name a cursor position); `WHERE true` or `WHERE 1 = 1` do not count.
fn restricts_rows(clause: Option<&Value>) -> bool {
    fn reads_column(v: &Value) -> bool {
        match v {
            Value::Array(a) => a.iter().any(reads_column),
            Value::Object(o) => {
                matches!(node(v), Some(("ColumnRef" | "CurrentOfExpr", _)))
                    || o.contains_key("cursor_name")
                    || o.values().any(reads_column)
            }
            _ => false,
        }
    }
    clause.is_some_and(reads_column)
}
