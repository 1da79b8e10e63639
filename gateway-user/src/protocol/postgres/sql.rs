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
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| ParseError {
        message: e.to_string(),
    })?;
    // One statement (the common case) is audited as the agent wrote it, which also spares
    // rendering the AST back to text; several are rendered one by one.
    let single = (statements.len() == 1).then(|| sql.trim().trim_end_matches(';').trim_end());
    Ok(statements.iter().map(|s| describe(s, single)).collect())
}

fn describe(stmt: &Statement, original: Option<&str>) -> StatementInfo {
    let mut c = Collector::default();
    let _ = stmt.visit(&mut c);
    let kind = kind_of(stmt, &c);
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
        text: original.map_or_else(|| stmt.to_string(), str::to_owned),
        redacted: redact(stmt),
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
            self.functions.push(function_name(&f.name));
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
mod tests {
    use super::*;
    use StatementKind as K;

    fn one(sql: &str) -> StatementInfo {
        let mut all = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(all.len(), 1, "{sql}");
        all.remove(0)
    }

    #[test]
    fn kinds() {
        #[rustfmt::skip]
        let cases = [
            ("SELECT 1", K::Select),
            ("VALUES (1)", K::Select),
            ("INSERT INTO t VALUES (1)", K::Insert),
            ("UPDATE t SET a = 1 WHERE id = 2", K::Update),
            ("DELETE FROM t WHERE id = 2", K::Delete),
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", K::Merge),
            ("COPY t TO STDOUT", K::Copy),
            ("CREATE TABLE t (id int)", K::Create),
            ("CREATE INDEX i ON t (a)", K::Create),
            ("CREATE ROLE r LOGIN", K::Create),
            ("ALTER TABLE t ADD COLUMN b int", K::Alter),
            ("ALTER ROLE r PASSWORD 'x'", K::Alter),
            ("DROP TABLE t", K::Drop),
            ("DROP FUNCTION f", K::Drop),
            ("TRUNCATE t", K::Truncate),
            ("GRANT SELECT ON t TO r", K::Grant),
            ("GRANT admin TO r", K::Grant),
            ("REVOKE SELECT ON t FROM r", K::Revoke),
            ("SET search_path = app", K::Set),
            ("RESET ALL", K::Set),
            ("SHOW search_path", K::Show),
            ("CALL p(1)", K::Call),
            ("BEGIN", K::Transaction),
            ("START TRANSACTION READ ONLY", K::Transaction),
            ("COMMIT", K::Transaction),
            ("ROLLBACK", K::Transaction),
            ("SAVEPOINT s", K::Transaction),
            ("RELEASE SAVEPOINT s", K::Transaction),
            ("ROLLBACK TO SAVEPOINT s", K::Transaction),
            ("PREPARE q AS SELECT 1", K::Prepare),
            ("EXECUTE q(1)", K::Execute),
            ("DEALLOCATE q", K::Deallocate),
            ("EXPLAIN SELECT 1", K::Explain),
            ("EXPLAIN DELETE FROM t", K::Explain),
            ("EXPLAIN (ANALYZE false) DELETE FROM t", K::Explain),
            ("EXPLAIN ANALYZE DELETE FROM t", K::Delete),
            ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", K::Update),
            ("EXPLAIN ANALYZE SELECT 1", K::Select),
            ("VACUUM t", K::Maintenance),
            ("ANALYZE t", K::Maintenance),
            ("REFRESH MATERIALIZED VIEW mv", K::Maintenance),
            ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", K::Lock),
            ("LISTEN ch", K::Notify),
            ("NOTIFY ch, 'x'", K::Notify),
            ("UNLISTEN ch", K::Notify),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", K::Insert),
            ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", K::Delete),
            ("SELECT * INTO t2 FROM t", K::Create),
            ("DECLARE c CURSOR FOR SELECT 1", K::Other),
            ("LOAD 'plugin'", K::Other),
        ];
        for (sql, kind) in cases {
            assert_eq!(one(sql).kind, kind, "{sql}");
        }
    }

    #[test]
    fn reads_and_writes() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("SELECT * FROM a JOIN s.b ON a.id = b.id", &["public.a", "s.b"], &[]),
            ("SELECT * FROM Users, \"Mixed\".\"Case\"", &["public.users", "Mixed.Case"], &[]),
            ("SELECT (SELECT max(x) FROM m) FROM a WHERE id IN (SELECT id FROM b)", &["public.m", "public.a", "public.b"], &[]),
            ("WITH c AS (SELECT * FROM t) SELECT * FROM c JOIN u ON true", &["public.t", "public.u"], &[]),
            // Non-recursive CTEs cannot see themselves: the inner `t` is the table.
            ("WITH t AS (SELECT * FROM t) SELECT * FROM t", &["public.t"], &[]),
            ("WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b", &["public.a"], &[]),
            ("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT 1 FROM r) SELECT * FROM r", &[], &[]),
            ("SELECT * FROM x.c", &["x.c"], &[]),
            ("INSERT INTO t SELECT * FROM src", &["public.src"], &["public.t"]),
            ("INSERT INTO t SELECT * FROM t", &["public.t"], &["public.t"]),
            ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", &["public.u"], &["public.t"]),
            ("UPDATE t SET a = 1 WHERE id = 1 RETURNING a", &["public.t"], &["public.t"]),
            ("DELETE FROM t USING u WHERE t.id = u.id", &["public.u"], &["public.t"]),
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", &["public.s"], &["public.t"]),
            ("COPY t TO STDOUT", &["public.t"], &[]),
            ("COPY t FROM STDIN", &[], &["public.t"]),
            ("COPY (SELECT * FROM s.x) TO STDOUT", &["s.x"], &[]),
            ("COPY t FROM PROGRAM 'cat /etc/passwd'", &[], &["public.t"]),
            ("TRUNCATE a, s.b", &[], &["public.a", "s.b"]),
            ("DROP TABLE a, s.b", &[], &["public.a", "s.b"]),
            ("DROP SCHEMA s", &[], &[]),
            ("ALTER TABLE t ADD COLUMN b int", &[], &["public.t"]),
            ("CREATE TABLE t2 AS SELECT * FROM t", &["public.t"], &["public.t2"]),
            ("CREATE VIEW v AS SELECT * FROM t", &["public.t"], &["public.v"]),
            ("CREATE INDEX i ON t (a)", &[], &["public.t"]),
            ("SELECT * INTO t2 FROM t", &["public.t"], &["public.t2"]),
            ("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO arch SELECT * FROM d", &["public.t"], &["public.t", "public.arch"]),
            ("EXPLAIN DELETE FROM t", &["public.t"], &[]),
            ("EXPLAIN ANALYZE DELETE FROM t", &[], &["public.t"]),
            ("GRANT SELECT ON t TO r", &["public.t"], &[]),
            ("LOCK TABLE t", &["public.t"], &[]),
            ("SELECT * FROM generate_series(1, 3) g, pg_read_file('x')", &[], &[]),
            ("PREPARE q AS DELETE FROM t", &[], &["public.t"]),
        ];
        for (sql, reads, writes) in cases {
            let info = one(sql);
            assert_eq!(info.reads, *reads, "reads of {sql}");
            assert_eq!(info.writes, *writes, "writes of {sql}");
        }
    }

    #[test]
    fn functions() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str])] = &[
            ("SELECT upper(lower(name)) FROM t", &["upper", "lower"]),
            ("SELECT 1 WHERE length(md5('x')) > 3", &["length", "md5"]),
            ("SELECT * FROM generate_series(1, 3)", &["generate_series"]),
            ("SELECT * FROM pg_catalog.pg_read_file('/etc/passwd')", &["pg_read_file"]),
            ("SELECT PG_CATALOG.PG_SLEEP(1)", &["pg_sleep"]),
            ("SELECT * FROM a, LATERAL f(a.x)", &["f"]),
            ("SELECT * FROM unnest(ARRAY[1])", &["unnest"]),
            ("CALL app.do_it(now())", &["app.do_it", "now"]),
            ("CREATE TABLE t (ts timestamptz DEFAULT now())", &["now"]),
            ("INSERT INTO t VALUES (dblink_exec('x'))", &["dblink_exec"]),
            ("UPDATE t SET a = 1 WHERE b = lo_import('/x')", &["lo_import"]),
            ("SELECT count(*) FROM t GROUP BY 1 HAVING sum(a) > 0", &["count", "sum"]),
        ];
        for (sql, functions) in cases {
            assert_eq!(one(sql).functions, *functions, "{sql}");
        }
    }

    #[test]
    fn flags() {
        // (sql, without_where, copy_program)
        #[rustfmt::skip]
        let cases = [
            ("UPDATE t SET a = 1", true, false),
            ("UPDATE t SET a = 1 WHERE true", false, false),
            ("DELETE FROM t", true, false),
            ("DELETE FROM t WHERE id = 1", false, false),
            ("WITH d AS (DELETE FROM t) SELECT 1", true, false),
            ("EXPLAIN DELETE FROM t", false, false),
            ("EXPLAIN ANALYZE DELETE FROM t", true, false),
            ("SELECT * FROM t", false, false),
            ("COPY t FROM PROGRAM 'curl x'", false, true),
            ("COPY (SELECT 1) TO PROGRAM 'gzip > /tmp/x'", false, true),
            ("COPY t TO '/tmp/x'", false, false),
        ];
        for (sql, without_where, copy_program) in cases {
            let info = one(sql);
            assert_eq!(info.without_where, without_where, "{sql}");
            assert_eq!(info.copy_program, copy_program, "{sql}");
        }
    }

    #[test]
    fn multi_statement_and_empty() {
        let infos = classify("SELECT 1; DELETE FROM t; ; BEGIN").unwrap();
        let kinds: Vec<_> = infos.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, [K::Select, K::Delete, K::Transaction]);
        assert_eq!(infos[1].text, "DELETE FROM t");
        for sql in ["", ";", " ; ;\n", "-- just a comment"] {
            assert_eq!(classify(sql).unwrap(), vec![], "{sql:?}");
        }
    }

    #[test]
    fn redaction() {
        #[rustfmt::skip]
        let cases = [
            ("SELECT * FROM t WHERE a = 'x' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
            ("SELECT NULL, true, $1, -2.5", "SELECT NULL, true, $1, -?"),
            ("INSERT INTO t VALUES ('secret', E'x', $$y$$)", "INSERT INTO t VALUES (?, ?, ?)"),
            ("SELECT DATE '2020-01-01' LIMIT 5", "SELECT DATE ? LIMIT ?"),
            ("ALTER ROLE bob PASSWORD 'hunter2'", "ALTER ROLE bob WITH PASSWORD ?"),
            ("COPY t FROM PROGRAM 'curl -u me:pw x'", "COPY t FROM PROGRAM '?'"),
            ("NOTIFY ch, 'payload'", "NOTIFY ch, '?'"),
        ];
        for (sql, redacted) in cases {
            let info = one(sql);
            assert_eq!(info.redacted, redacted, "{sql}");
            assert_ne!(info.text, info.redacted, "{sql}");
        }
        // One statement keeps the agent's own text; several are rendered one by one.
        let info = one("select a from t where id = 1;");
        assert_eq!(info.text, "select a from t where id = 1");
        let two = classify("select 1; select 'x'").unwrap();
        assert_eq!(
            (two[0].text.as_str(), two[1].text.as_str()),
            ("SELECT 1", "SELECT 'x'")
        );
    }

    #[test]
    fn unparseable_is_an_error() {
        #[rustfmt::skip]
        let cases = [
            "SELEC 1",
            "SELECT 'unterminated",
            "DO $$ BEGIN PERFORM 1; END $$",
            "SELECT 1; DO $$ BEGIN END $$",
            "CLUSTER t",
            "REINDEX TABLE t",
            "CHECKPOINT",
            "TABLE t",
            "EXPLAIN ANALYSE DELETE FROM t",
            "ALTER SYSTEM SET work_mem = '1GB'",
        ];
        for sql in cases {
            let err = classify(sql).expect_err(sql);
            assert!(!err.message.is_empty(), "{sql}");
        }
        // sqlparser's recursion limit turns absurd nesting into an error too.
        let deep = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
        assert!(classify(&deep).is_err());
    }

    #[test]
    fn kind_serde_is_snake_case() {
        assert_eq!(
            serde_json::to_string(&K::Maintenance).unwrap(),
            "\"maintenance\""
        );
        let k: StatementKind = serde_json::from_str("\"deallocate\"").unwrap();
        assert_eq!(k, K::Deallocate);
        let info = serde_json::to_value(one("SELECT 1")).unwrap();
        assert_eq!(info["kind"], "select");
    }

    #[test]
    fn kind_names_are_the_serde_names() {
        for k in [
            StatementKind::Select,
            StatementKind::Transaction,
            StatementKind::Maintenance,
            StatementKind::Other,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
