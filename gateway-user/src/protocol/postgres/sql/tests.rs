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
    // One statement: its tokens with literals hidden (shape.rs has the cases).
    let info = one("ALTER ROLE bob PASSWORD 'hunter2';");
    assert_eq!(info.redacted, "ALTER ROLE bob PASSWORD ?");
    assert_eq!(info.text, "ALTER ROLE bob PASSWORD 'hunter2'");
    // Several: each rendered from its tree, literals as `?` (or '?' where the AST keeps a
    // plain string).
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
        let two = classify(&format!("SELECT 0; {sql}")).unwrap();
        assert_eq!(two[1].redacted, redacted, "{sql}");
        assert_ne!(two[1].text, two[1].redacted, "{sql}");
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
fn what_may_turn_standard_conforming_strings_off() {
    #[rustfmt::skip]
    let cases = [
        ("SET standard_conforming_strings = off", true),
        ("SET LOCAL standard_conforming_strings TO 'off'", true),
        ("set \"standard_conforming_strings\" = on", true),
        ("RESET standard_conforming_strings", true),
        ("ALTER ROLE app SET standard_conforming_strings = off", true),
        ("SELECT set_config('standard_conforming_strings', 'off', false)", true),
        ("SELECT set_config(' Standard_Conforming_Strings ', 'off', false)", true),
        ("SELECT set_config('standard_' || 'conforming_strings', 'off', false)", true),
        ("SELECT set_config(name, 'off', false) FROM pg_settings", true),
        ("SELECT * FROM set_config('standard_conforming_strings', 'off', false)", true),
        ("SELECT * FROM set_config('app.user_id', '1', false)", true),
        ("SELECT set_config('app.user_id', '42', false)", false),
        ("SHOW standard_conforming_strings", false),
        ("SELECT current_setting('standard_conforming_strings')", false),
        ("SET search_path = app", false),
    ];
    for (sql, expected) in cases {
        assert_eq!(one(sql).sets_string_syntax, expected, "{sql}");
    }
    assert!(one("SELECT set_config('app.user_id', '42', false)").reads_literals);
}

#[test]
fn functions_that_run_sql_text_are_flagged() {
    for sql in [
        "SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')",
        "SELECT * FROM dblink('host=x', 'DROP TABLE t') AS r(a int)",
        "SELECT dblink_exec('DROP TABLE t')",
    ] {
        assert!(one(sql).runs_sql_text, "{sql}");
    }
    assert!(!one("SELECT xmlconcat(a, b) FROM t").runs_sql_text);
}

#[test]
fn only_explain_options_make_a_description_read_literals() {
    assert!(one("EXPLAIN (ANALYZE off) DELETE FROM t").reads_literals);
    assert!(!one("EXPLAIN DELETE FROM t").reads_literals);
    assert!(!one("SELECT * FROM t WHERE a = 'x' LIMIT 3").reads_literals);
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
