//! Statement classification: what a SQL string does, which relations it
//! touches and which functions it calls, so policy can be decided without
//! talking to PostgreSQL.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    CopySource, CopyTarget, Expr, FromTable, GrantObjects, Ident, ObjectName, ObjectNamePart,
    ObjectType, Query, Select, SetExpr, Statement, TableFactor, TableObject, Value, ValueWithSpan,
    Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::shape;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    Set,
    Show,
    Call,
    /// Never produced by [`classify`] today (sqlparser cannot parse `DO`), kept
    /// so rules and audits can already name it.
    Do,
    Transaction,
    Prepare,
    Execute,
    Deallocate,
    Explain,
    Maintenance,
    Lock,
    Notify,
    Other,
}

impl StatementKind {
    /// The name rules and audits use (the serde name), without going through serde on the
    /// per-statement path.
    pub fn as_str(self) -> &'static str {
        use StatementKind as K;
        match self {
            K::Select => "select",
            K::Insert => "insert",
            K::Update => "update",
            K::Delete => "delete",
            K::Merge => "merge",
            K::Copy => "copy",
            K::Create => "create",
            K::Alter => "alter",
            K::Drop => "drop",
            K::Truncate => "truncate",
            K::Grant => "grant",
            K::Revoke => "revoke",
            K::Set => "set",
            K::Show => "show",
            K::Call => "call",
            K::Do => "do",
            K::Transaction => "transaction",
            K::Prepare => "prepare",
            K::Execute => "execute",
            K::Deallocate => "deallocate",
            K::Explain => "explain",
            K::Maintenance => "maintenance",
            K::Lock => "lock",
            K::Notify => "notify",
            K::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatementInfo {
    pub kind: StatementKind,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub functions: Vec<String>,
    pub without_where: bool,
    pub copy_program: bool,
    /// Whether the description depends on a literal's value, so that the same statement with
    /// other values could be described otherwise (and must not be judged by its shape).
    pub reads_literals: bool,
    /// Whether it may change how PostgreSQL reads string literals ([`STRING_SYNTAX_SETTING`]).
    pub sets_string_syntax: bool,
    /// Whether it calls a function that runs SQL text the gateway cannot judge
    /// ([`SQL_TEXT_FUNCTIONS`]).
    pub runs_sql_text: bool,
    pub text: String,
    pub redacted: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse SQL: {message}")]
pub struct ParseError {
    pub message: String,
}

/// Parses `sql` (possibly several `;`-separated statements) and describes each.
/// Anything sqlparser rejects is an error: the caller must fail closed rather
/// than guess what an unparsed statement does.
pub fn classify(sql: &str) -> Result<Vec<StatementInfo>, ParseError> {
    classify_tokens(sql, shape::tokenize(sql)?)
}

/// [`classify`] of text already tokenized by [`shape::tokenize`].
pub fn classify_tokens(
    sql: &str,
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<StatementInfo>, ParseError> {
    // Rendered before the parser takes the tokens; used only if the text is one statement.
    let redacted = shape::redacted_text(&tokens);
    let names_string_syntax = tokens.iter().any(|t| {
        matches!(&t.token, Token::Word(w) if w.value.eq_ignore_ascii_case(STRING_SYNTAX_SETTING))
    });
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| ParseError {
            message: e.to_string(),
        })?;
    // One statement (the common case) is audited as the agent wrote it, or as its tokens with
    // the literals hidden, which spares rendering the AST back to text; several are rendered
    // one by one.
    if let [one] = statements.as_slice() {
        let text = sql.trim().trim_end_matches(';').trim_end();
        return Ok(vec![describe(
            one,
            Some((text, redacted)),
            names_string_syntax,
        )]);
    }
    Ok(statements
        .iter()
        .map(|s| describe(s, None, names_string_syntax))
        .collect())
}

fn describe(
    stmt: &Statement,
    original: Option<(&str, String)>,
    names_string_syntax: bool,
) -> StatementInfo {
    let mut c = Collector::default();
    let _ = stmt.visit(&mut c);
    let kind = kind_of(stmt, &c);
    let set_config_unchecked =
        c.functions.iter().filter(|f| *f == "set_config").count() > c.set_config_checked;
    let runs_sql_text = c
        .functions
        .iter()
        .any(|f| SQL_TEXT_FUNCTIONS.contains(&f.as_str()));
    let mut copy_program = false;
    if let Statement::Copy {
        source, to, target, ..
    } = stmt
    {
        copy_program = matches!(target, CopyTarget::Program { .. });
        // The COPY table is not a visited relation in sqlparser's AST.
        if let CopySource::Table { table_name, .. } = source {
            let name = relation_name(table_name);
            if *to {
                c.extra_reads.push(name);
            } else {
                c.writes.push(name);
            }
        }
    }
    if let Statement::Explain { .. } = stmt
        && kind == StatementKind::Explain
    {
        // A plain EXPLAIN only plans: nothing it names is written or executed,
        // but the names still count as references so table rules see them.
        let moved = std::mem::take(&mut c.writes);
        c.extra_reads.extend(moved);
        c.without_where = false;
    }
    let mut reads: Vec<String> = c
        .relations
        .iter()
        .filter(|(ptr, _)| !c.write_ptrs.contains(ptr))
        .map(|(_, name)| name.clone())
        .collect();
    reads.append(&mut c.extra_reads);
    reads.append(&mut c.dml_returning_reads);
    StatementInfo {
        kind,
        reads: dedup(reads),
        writes: dedup(c.writes),
        functions: dedup(c.functions),
        without_where: c.without_where,
        copy_program,
        reads_literals: c.read_literal || reads_literals(stmt),
        runs_sql_text,
        sets_string_syntax: set_config_unchecked
            || c.sets_string_syntax
            || (names_string_syntax
                && matches!(
                    kind,
                    StatementKind::Set | StatementKind::Alter | StatementKind::Create
                )),
        text: original
            .as_ref()
            .map_or_else(|| stmt.to_string(), |(t, _)| (*t).to_owned()),
        redacted: original.map_or_else(|| redact(stmt), |(_, r)| r),
    }
}

fn dedup(mut names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

#[rustfmt::skip]
fn kind_of(stmt: &Statement, c: &Collector) -> StatementKind {
    use StatementKind as K;
    match stmt {
        Statement::Query(q) => kind_of_query(q, c),
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::Copy { .. } => K::Copy,
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    let name = o.name.value.to_ascii_lowercase();
                    (name == "analyze" || name == "analyse") && !is_false(o.arg.as_ref())
                });
            // EXPLAIN ANALYZE runs the statement, so it is judged as that statement.
            if analyze {
                kind_of(statement, c)
            } else {
                K::Explain
            }
        }
        Statement::CreateView(_) | Statement::CreateTable(_) | Statement::CreateIndex(_)
        | Statement::CreateRole(_) | Statement::CreateUser(_) | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. } | Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. } | Statement::CreateTrigger(_)
        | Statement::CreateSequence { .. } | Statement::CreateType { .. }
        | Statement::CreateDomain(_) | Statement::CreateExtension(_)
        | Statement::CreateCollation(_) | Statement::CreatePolicy(_) | Statement::CreateRule(_)
        | Statement::CreateServer(_) | Statement::CreateForeignTable(_)
        | Statement::CreateForeignDataWrapper(_) | Statement::CreateUserMapping(_)
        | Statement::CreateOperator(_) | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_) | Statement::CreateTextSearch(_)
        | Statement::CreateAggregate(_) | Statement::CreateVirtualTable { .. } => K::Create,
        Statement::AlterTable(_) | Statement::AlterSchema(_) | Statement::AlterIndex { .. }
        | Statement::AlterView(_) | Statement::AlterFunction(_) | Statement::AlterType(_)
        | Statement::AlterCollation(_) | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_) | Statement::AlterOperatorClass(_)
        | Statement::AlterTextSearch(_) | Statement::AlterRole { .. } | Statement::AlterUser(_)
        | Statement::AlterPolicy(_) | Statement::AlterTrigger(_) | Statement::RenameTable(_) => {
            K::Alter
        }
        Statement::Drop { .. } | Statement::DropFunction(_) | Statement::DropDomain(_)
        | Statement::DropProcedure { .. } | Statement::DropPolicy(_) | Statement::DropRule(_)
        | Statement::DropTrigger(_) | Statement::DropExtension(_) | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_) | Statement::DropOperatorClass(_) => K::Drop,
        Statement::Truncate(_) => K::Truncate,
        Statement::Grant(_) | Statement::GrantRole(_) | Statement::AlterDefaultPrivileges(_) => {
            K::Grant
        }
        Statement::Revoke(_) | Statement::RevokeRole(_) => K::Revoke,
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => K::Set,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. }
        | Statement::ShowFunctions { .. } | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. } | Statement::ShowColumns { .. }
        | Statement::ShowSchemas { .. } | Statement::ShowDatabases { .. } => K::Show,
        Statement::Call(_) => K::Call,
        Statement::StartTransaction { .. } | Statement::Commit { .. }
        | Statement::Rollback { .. } | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => K::Transaction,
        Statement::Prepare { .. } => K::Prepare,
        Statement::Execute { .. } => K::Execute,
        Statement::Deallocate { .. } => K::Deallocate,
        Statement::Vacuum(_) | Statement::Analyze(_) | Statement::RefreshMaterializedView(_) => {
            K::Maintenance
        }
        Statement::Lock(_) => K::Lock,
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } | Statement::NOTIFY { .. } => {
            K::Notify
        }
        // DECLARE/FETCH, COMMENT, LOAD (a shared library in PostgreSQL) and
        // other dialects' statements: Other, which rules must allow explicitly.
        _ => K::Other,
    }
}

fn kind_of_query(q: &Query, c: &Collector) -> StatementKind {
    match q.body.as_ref() {
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            kind_of(s, c)
        }
        SetExpr::Query(inner) => kind_of_query(inner, c),
        // A data-modifying CTE makes a SELECT a write; SELECT INTO creates a table.
        _ => c.first_dml.unwrap_or(if c.select_into {
            StatementKind::Create
        } else {
            StatementKind::Select
        }),
    }
}

/// The name of the setting that makes PostgreSQL read backslashes in plain '...' strings as
/// escapes. sqlparser reads them as PostgreSQL does with it on (the default); with it off the
/// two would disagree about where a string ends, and text the gateway judged as inside a string
/// could run as a statement. So nothing the agent sends may turn it off.
pub const STRING_SYNTAX_SETTING: &str = "standard_conforming_strings";

/// Functions that run SQL given to them as text (here or on another server): the statement
/// inside is out of the judge's sight, so a statement calling one is refused whatever the
/// rules say.
pub const SQL_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
];

/// `set_config(name, ...)` may change the string syntax unless its name is a string literal
/// naming another setting.
fn set_config_may_set_string_syntax(f: &sqlparser::ast::Function) -> bool {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let FunctionArguments::List(list) = &f.args else {
        return true;
    };
    match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            Value::SingleQuotedString(name) | Value::EscapedStringLiteral(name) => {
                name.trim().eq_ignore_ascii_case(STRING_SYNTAX_SETTING)
            }
            _ => true,
        },
        _ => true,
    }
}

/// EXPLAIN's options are the one place [`kind_of`] reads a value (`ANALYZE off`).
fn reads_literals(stmt: &Statement) -> bool {
    matches!(stmt, Statement::Explain { options: Some(o), .. } if o.iter().any(|o| o.arg.is_some()))
}

/// Only an explicit false turns an EXPLAIN option off; anything unclear counts
/// as on, so EXPLAIN (ANALYZE <odd value>) is still judged as execution.
fn is_false(arg: Option<&Expr>) -> bool {
    let text = match arg {
        None => return false,
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => return !b,
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
            _ => return false,
        },
        Some(Expr::Identifier(i)) => i.value.clone(),
        Some(_) => return false,
    };
    matches!(
        text.to_ascii_lowercase().as_str(),
        "false" | "off" | "0" | "no"
    )
}

/// Lowercases unquoted parts (PostgreSQL folds them) and defaults the schema
/// to `public` so rules can be written against one canonical spelling.
fn relation_name(name: &ObjectName) -> String {
    let parts = name_parts(name);
    if parts.len() == 1 {
        format!("public.{}", parts[0])
    } else {
        parts.join(".")
    }
}

fn function_name(name: &ObjectName) -> String {
    let joined = name_parts(name).join(".").to_lowercase();
    match joined.strip_prefix("pg_catalog.") {
        Some(rest) => rest.to_string(),
        None => joined,
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(i) => ident_name(i),
            other => other.to_string().to_lowercase(),
        })
        .collect()
}

fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// CTE names declared by one query. Non-recursive CTEs only see earlier
/// siblings, so `WITH t AS (SELECT * FROM t)` still reads the real table `t`.
struct Scope {
    names: Vec<String>,
    bodies: Vec<*const Query>,
    recursive: bool,
    visible: usize,
}

#[derive(Default)]
struct Collector {
    /// Every relation occurrence, keyed by AST address so a write target can
    /// be told apart from a read of the same table elsewhere in the statement.
    relations: Vec<(*const ObjectName, String)>,
    write_ptrs: Vec<*const ObjectName>,
    writes: Vec<String>,
    extra_reads: Vec<String>,
    dml_returning_reads: Vec<String>,
    functions: Vec<String>,
    first_dml: Option<StatementKind>,
    without_where: bool,
    select_into: bool,
    skip_next_relation: bool,
    scopes: Vec<Scope>,
    /// A literal's value decided something here (see [`StatementInfo::reads_literals`]).
    read_literal: bool,
    sets_string_syntax: bool,
    /// `set_config` calls whose arguments were checked (expression calls; a `FROM
    /// set_config(...)` is not, and counts as changing the string syntax).
    set_config_checked: usize,
}

impl Collector {
    fn write(&mut self, name: &ObjectName) {
        self.write_ptrs.push(name as *const ObjectName);
        self.writes.push(relation_name(name));
    }

    fn dml(&mut self, kind: StatementKind) {
        self.first_dml.get_or_insert(kind);
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return false;
        };
        let wanted = ident_name(ident);
        self.scopes
            .iter()
            .any(|s| s.names[..s.visible].contains(&wanted))
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let ptr = query as *const Query;
        if let Some(top) = self.scopes.last_mut()
            && let Some(i) = top.bodies.iter().position(|b| *b == ptr)
        {
            top.visible = if top.recursive { top.names.len() } else { i };
        }
        let (names, bodies, recursive) = match &query.with {
            Some(with) => (
                with.cte_tables
                    .iter()
                    .map(|cte| ident_name(&cte.alias.name))
                    .collect::<Vec<_>>(),
                with.cte_tables
                    .iter()
                    .map(|cte| &*cte.query as *const Query)
                    .collect(),
                with.recursive,
            ),
            None => (Vec::new(), Vec::new(), false),
        };
        // Nothing is visible until the first CTE body is entered (above);
        // the main body sees every name once the last body is done (below).
        self.scopes.push(Scope {
            names,
            bodies,
            recursive,
            visible: 0,
        });
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        let ptr = query as *const Query;
        if let Some(top) = self.scopes.last_mut()
            && top.bodies.last() == Some(&ptr)
        {
            top.visible = top.names.len();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.select_into = true;
            for target in &into.targets {
                let name = match target {
                    Expr::Identifier(i) => ObjectName::from(vec![i.clone()]),
                    Expr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
                    _ => continue,
                };
                self.writes.push(relation_name(&name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM f(args)` parses as a table with arguments: it is a call.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.functions.push(function_name(name));
                self.skip_next_relation = true;
            }
            TableFactor::Function { name, .. } => self.functions.push(function_name(name)),
            TableFactor::UNNEST { .. } => self.functions.push("unnest".into()),
            TableFactor::JsonTable { .. } => self.functions.push("json_table".into()),
            TableFactor::XmlTable { .. } => self.functions.push("xmltable".into()),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.skip_next_relation) || self.is_cte(relation) {
            return ControlFlow::Continue(());
        }
        self.relations
            .push((relation as *const ObjectName, relation_name(relation)));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            let name = function_name(&f.name);
            if name == "set_config" {
                self.read_literal = true;
                self.set_config_checked += 1;
                self.sets_string_syntax |= set_config_may_set_string_syntax(f);
            }
            self.functions.push(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        use StatementKind as K;
        let mut returning_target = None;
        match stmt {
            Statement::Insert(ins) => {
                self.dml(K::Insert);
                if let TableObject::TableName(name) = &ins.table {
                    self.write(name);
                    returning_target = ins.returning.as_ref().map(|_| name);
                }
            }
            Statement::Update(up) => {
                self.dml(K::Update);
                self.without_where |= up.selection.is_none();
                if let TableFactor::Table { name, .. } = &up.table.relation {
                    self.write(name);
                    returning_target = up.returning.as_ref().map(|_| name);
                }
            }
            Statement::Delete(del) => {
                self.dml(K::Delete);
                self.without_where |= del.selection.is_none();
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &del.from;
                if del.tables.is_empty() {
                    for twj in from {
                        if let TableFactor::Table { name, .. } = &twj.relation {
                            self.write(name);
                            returning_target = del.returning.as_ref().map(|_| name);
                        }
                    }
                } else {
                    // MySQL's multi-table form names its targets separately.
                    self.writes.extend(del.tables.iter().map(relation_name));
                }
            }
            Statement::Merge(m) => {
                self.dml(K::Merge);
                if let TableFactor::Table { name, .. } = &m.table {
                    self.write(name);
                }
            }
            Statement::Truncate(t) => t.table_names.iter().for_each(|t| self.write(&t.name)),
            Statement::CreateTable(t) => self.write(&t.name),
            Statement::CreateView(v) => self.write(&v.name),
            Statement::CreateIndex(i) => self.write(&i.table_name),
            Statement::CreatePolicy(p) => self.write(&p.table_name),
            Statement::CreateRule(r) => self.write(&r.table_name),
            Statement::CreateForeignTable(t) => self.write(&t.name),
            Statement::AlterTable(t) => self.write(&t.name),
            Statement::AlterView(v) => self.write(&v.name),
            Statement::AlterPolicy(p) => self.write(&p.table_name),
            Statement::AlterTrigger(t) => self.write(&t.table_name),
            Statement::DropPolicy(p) => self.write(&p.table_name),
            Statement::DropRule(r) => self.write(&r.table_name),
            Statement::RefreshMaterializedView(r) => self.write(&r.name),
            Statement::CreateSequence { name, .. } | Statement::AlterIndex { name, .. } => {
                self.writes.push(relation_name(name));
            }
            Statement::CreateTrigger(t) => self.writes.push(relation_name(&t.table_name)),
            Statement::Drop {
                object_type:
                    ObjectType::Table
                    | ObjectType::ForeignTable
                    | ObjectType::View
                    | ObjectType::MaterializedView
                    | ObjectType::Index
                    | ObjectType::Sequence,
                names,
                ..
            } => self.writes.extend(names.iter().map(relation_name)),
            Statement::Vacuum(v) => self
                .extra_reads
                .extend(v.table_name.iter().map(relation_name)),
            Statement::Grant(g) => self.extra_reads.extend(granted_tables(g.objects.as_ref())),
            Statement::Revoke(r) => self.extra_reads.extend(granted_tables(r.objects.as_ref())),
            Statement::Call(f) => self.functions.push(function_name(&f.name)),
            _ => {}
        }
        // RETURNING hands the target's rows back to the client, so it is a read
        // too; otherwise a mask rule on reads could be bypassed by a no-op UPDATE.
        if let Some(name) = returning_target {
            self.dml_returning_reads.push(relation_name(name));
        }
        ControlFlow::Continue(())
    }
}

fn granted_tables(objects: Option<&GrantObjects>) -> Vec<String> {
    match objects {
        Some(GrantObjects::Tables(names) | GrantObjects::Views(names))
        | Some(GrantObjects::Sequences(names)) => names.iter().map(relation_name).collect(),
        _ => Vec::new(),
    }
}

/// Renders the statement with literals replaced by `?` so audit logs can keep
/// the shape of a query without the data (or passwords) inside it.
fn redact(stmt: &Statement) -> String {
    struct Redactor;
    impl VisitorMut for Redactor {
        type Break = ();
        fn post_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<()> {
            if !matches!(
                v.value,
                Value::Null | Value::Boolean(_) | Value::Placeholder(_)
            ) {
                v.value = Value::Placeholder("?".into());
            }
            ControlFlow::Continue(())
        }
    }
    let mut copy = stmt.clone();
    let _ = VisitMut::visit(&mut copy, &mut Redactor);
    // A few literals are plain strings in the AST rather than values.
    match &mut copy {
        Statement::NOTIFY {
            payload: Some(p), ..
        }
        | Statement::Comment {
            comment: Some(p), ..
        } => *p = "?".into(),
        Statement::Copy {
            target, payload, ..
        } => {
            match target {
                CopyTarget::File { filename } => *filename = "?".into(),
                CopyTarget::Program { command } => *command = "?".into(),
                _ => {}
            }
            if let Some(p) = payload {
                p.data = "?".into();
            }
        }
        _ => {}
    }
    copy.to_string()
}

#[cfg(test)]
mod tests;
