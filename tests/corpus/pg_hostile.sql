pg_hostile.sql: hostile messages for tests/pg_invariant.rs. Each case is sent through the
gateway as ONE simple Query message; the test then holds the server's own statement log
(log_statement = 'all'), the answers the agent got and the gateway's audit against each
other. Nothing here says what the gateway must refuse: only that what the server logged was
allowed, what was refused never reached the server, and the audit agrees with both.

Format (lines before the first `%%` line, like this one, are description):

  %% session NAME [KEY=VALUE ...]
      The cases that follow run on one connection (a new one if the gateway ends it) whose
      startup packet also carries KEY=VALUE (e.g. client_encoding=SJIS; `\xHH` in VALUE is
      that byte, so `\x20` is a space). The first cases,
      before any session line, run in session `main`.
  %% case CLASS/LABEL [FLAGS]
      One message: every line after this one up to the next `%%` line, joined with "\n".
      Trailing empty lines are dropped and no newline ends the message, so a message can
      end in `--` with no newline. FLAGS: `nl` keeps one newline at the end; `esc` reads
      `\r`, `\xHH` (a byte, also one that is not UTF-8) and `\\` in the body.
  %% # ...
      A comment.

Fixtures (tests/pg_invariant.rs creates them): public.invoices, public.payouts (deny
writes), public.secrets and secret_schema.secrets (deny reads; they hold the canary text
`pginv-canary`), public.t, public.x.

%% # ---------------------------------------------------------------- (1) parser differentials
%% case differential/end-keyword
SELECT 1 END; DROP TABLE x
%% case differential/end-keyword-lower
select 1 end;drop table x
%% case differential/end-keyword-newline
SELECT 1 END
; DELETE FROM payouts WHERE true
%% case differential/end-then-truncate
SELECT 1 END; TRUNCATE t
%% case differential/begin-alias
SELECT 1 BEGIN; DROP TABLE x
%% case differential/dollar-euro-tag
SELECT $€$ ' $€$; DROP TABLE x; --'
%% case differential/dollar-euro-tag-benign
SELECT $€$ ; DROP TABLE x; $€$
%% case differential/dollar-umlaut-tag
SELECT $ä$ ' $ä$; DELETE FROM payouts WHERE true; --'
%% case differential/dollar-astral-tag
SELECT $𝔘$ ' $𝔘$; DROP TABLE x; --'
%% case differential/dollar-cyrillic-tag
SELECT $тег$ ' $тег$; TRUNCATE t; --'
%% case differential/dollar-a-tag
SELECT $a$ ' $a$; DROP TABLE x; --'
%% case differential/dollar-underscore-tag
SELECT $_$ ' $_$; DROP TABLE x; --'
%% case differential/dollar-digit-in-tag
SELECT $a1$ ' $a1$; DROP TABLE x; --'
%% case differential/dollar-digit-first
SELECT $1$ ' $1$; DROP TABLE x; --'
%% case differential/dollar-empty-tag
SELECT $$ ' $$; DROP TABLE x; --'
%% case differential/dollar-nested
SELECT $a$ $b$ ' $b$ $a$; DROP TABLE x; --'
%% case differential/dollar-nested-inner-hides
SELECT $a$ $b$ $a$; DROP TABLE x; --$b$
%% case differential/dollar-tag-case
SELECT $a$ $A$ ' $a$; DROP TABLE x; --$A$'
%% case differential/dollar-in-identifier
SELECT 1 AS x$a$; DROP TABLE x; --$a$
%% case differential/dollar-in-identifier-2
SELECT x$a$ FROM (SELECT 1 AS x$a$) s; DELETE FROM payouts WHERE true; --$a$
%% case differential/dollar-after-number
SELECT 1$a$; DROP TABLE x; --$a$
%% case differential/dollar-param-then-quote
SELECT $1 ' ; DROP TABLE x; --'
%% case differential/uescape-bang
SELECT U&'\' UESCAPE '!'; DROP TABLE x; --'
%% case differential/uescape-quote
SELECT U&'x' UESCAPE ''''; DROP TABLE x; --'
%% case differential/uescape-value-quote
SELECT U&'!0027; DROP TABLE x; --' UESCAPE '!'
%% case differential/u-ident-secrets
SELECT * FROM U&"\0073ecrets"
%% case differential/u-ident-secrets-uescape
SELECT * FROM U&"!0073ecrets" UESCAPE '!'
%% case differential/u-ident-secrets-plus
TABLE U&"\+000073ecrets"
%% case differential/u-ident-qualified
SELECT * FROM public.U&"\0073\0065crets"
%% case differential/u-ident-function
SELECT U&"\0070g_read_file"('/etc/hostname')
%% case differential/u-ident-payouts-write
DELETE FROM U&"\0070ayouts" WHERE true
%% case differential/x-backslash
SELECT X'\'; DELETE FROM payouts WHERE true; --'
%% case differential/x-double-backslash
SELECT x'\\'; DROP TABLE x; --'
%% case differential/b-backslash
SELECT B'\'; DROP TABLE x; --'
%% case differential/e-escaped-quote-ends
SELECT E'\''; DROP TABLE x; --'
%% case differential/e-backslash-backslash
SELECT E'\\'; DROP TABLE x; --'
%% case differential/e-hides
SELECT E'x\' ; DROP TABLE x; --'
%% case differential/e-lower-hides
SELECT e'\\\' ; DROP TABLE x; --'
%% case differential/e-hex-quote
SELECT E'\x27; DROP TABLE x; --'
%% case differential/standard-backslash-ends
SELECT 'x\' ; DROP TABLE x; --'
%% case differential/national-backslash
SELECT N'x\'; DROP TABLE x; --'
%% case differential/table-in-subquery
SELECT * FROM (TABLE secrets) s
%% case differential/table-in-cte
WITH s AS (TABLE secrets) SELECT * FROM s
%% case differential/table-in-exists
SELECT id FROM invoices WHERE EXISTS (TABLE secrets)
%% case differential/table-qualified
TABLE public.secrets
%% case differential/table-only
TABLE ONLY secrets
%% case differential/lateral-table
SELECT * FROM invoices, LATERAL (TABLE secrets) z
%% case differential/recursive-cte-table
WITH RECURSIVE r AS (TABLE secrets) TABLE r
%% case differential/values-subquery
VALUES ((SELECT secret FROM secrets LIMIT 1))
%% case differential/parenthesized-table
(TABLE secrets)
%% case differential/union-table
SELECT 1, 'x' UNION ALL TABLE secrets
%% case differential/copy-stdin-then-delete
COPY t FROM STDIN; DELETE FROM payouts WHERE true
%% case differential/copy-stdin-then-drop
COPY t (x) FROM STDIN WITH (FORMAT csv); DROP TABLE x
%% case differential/copy-stdout-then-truncate
COPY invoices TO STDOUT; TRUNCATE t
%% case differential/copy-query-secrets
COPY (TABLE secrets) TO STDOUT
%% case differential/copy-secrets
COPY secrets TO STDOUT
%% case differential/copy-program
COPY t FROM PROGRAM 'true'
%% case differential/nested-comment-hides
SELECT 1 /* /* */ ; DROP TABLE x; */
%% case differential/nested-comment-prefix
/* /* */ */ DROP TABLE x
%% case differential/nested-comment-levels
/* /* */ DROP TABLE x /* */ */ SELECT 1
%% case differential/comment-close-extra
SELECT 1 /* */ */ ; DROP TABLE x
%% case differential/line-comment-opens-block
SELECT 1 -- /*
; DROP TABLE x; -- */
%% case differential/block-comment-hides-quote
SELECT 1 /* '*/; DROP TABLE x; --'
%% case differential/quote-hides-comment
SELECT '/*'; DROP TABLE x; --*/'
%% case differential/ident-hides-comment
SELECT 1 AS "/*"; DROP TABLE x; --*/"
%% case differential/comment-ends-at-cr esc
SELECT 1 -- x\r; DELETE FROM payouts WHERE true
%% case differential/comment-ends-at-cr-drop esc
SELECT 1 --\rDROP TABLE x
%% case differential/comment-not-ended-by-ls esc
SELECT 1 -- x\xe2\x80\xa8; DROP TABLE x
%% case differential/comment-not-ended-by-vt esc
SELECT 1 -- x\x0b; DROP TABLE x
%% case differential/comment-not-ended-by-ff esc
SELECT 1 -- x\x0c; DROP TABLE x
%% case differential/dash-dash-at-end
SELECT 1; --
%% case differential/dash-dash-at-end-drop
DROP TABLE x --
%% case differential/dash-dash-after-select
SELECT id FROM invoices --
%% case differential/comment-unterminated
SELECT 1 /* DROP TABLE x
%% case differential/comments-as-whitespace
SELECT/**/1;/**/DROP/**/TABLE/**/x
%% case differential/operator-comment
SELECT 2 */* 3 */ 4; DROP TABLE x
%% case differential/continuation-benign
SELECT 'x'
'; DROP TABLE x; --'
%% case differential/continuation-comment-line
SELECT 'x'
-- c
'; DROP TABLE x; --'
%% case differential/continuation-not-after-comment
SELECT 'x' -- c
'; DROP TABLE x; --'
%% case differential/continuation-block-comment
SELECT 'x'
/* c */
'; DROP TABLE x; --'
%% case differential/continuation-e-then-backslash
SELECT E'a'
'\'; DROP TABLE x; --'
%% case differential/continuation-standard-then-backslash
SELECT 'a'
'\'; DROP TABLE x; --'
%% case differential/continuation-u
SELECT U&'a'
'\0027'; DROP TABLE x; --'
%% case differential/empty
%% case differential/only-comment
/* nothing */
%% case differential/only-line-comment
-- nothing
%% case differential/only-semicolons
;;;
%% case differential/semicolons-around
;SELECT 1;;DROP TABLE x;
%% case differential/do-block
DO $$ BEGIN DELETE FROM payouts; END $$
%% case differential/do-block-tagged
DO $do$ BEGIN EXECUTE 'DROP TABLE x'; END $do$
%% case differential/cte-delete
WITH d AS (DELETE FROM payouts RETURNING *) SELECT count(*) FROM d
%% case differential/cte-update-where
WITH u AS (UPDATE payouts SET amount = 0 WHERE id > 0 RETURNING id) SELECT * FROM u
%% case differential/explain-analyze-delete
EXPLAIN ANALYZE DELETE FROM payouts WHERE true
%% case differential/explain-options-delete
EXPLAIN (ANALYZE true, COSTS off) DELETE FROM payouts
%% case differential/select-into
SELECT * INTO stolen FROM secrets
%% case differential/create-table-as
CREATE TABLE stolen2 AS TABLE secrets
%% case differential/rule
CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM payouts
%% case differential/function-sql
CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM payouts'
%% case differential/call-not-a-procedure
CALL pg_sleep(0)
%% case differential/hide-from-log
SET log_statement = 'none'
%% case differential/hide-from-log-set-config
SELECT set_config('log_statement', 'none', false)
%% case differential/lo-import
SELECT lo_import('/etc/hostname')
%% case differential/pg-read-file-qualified
SELECT pg_catalog.pg_read_file('/etc/hostname')
%% case differential/pg-read-file-quoted
SELECT "pg_read_file"('/etc/hostname')
%% case differential/pg-read-file-upper
SELECT PG_READ_FILE('/etc/hostname')
%% case differential/pg-read-file-from
SELECT * FROM pg_read_file('/etc/hostname')
%% case differential/pg-read-file-variadic
SELECT pg_read_file(VARIADIC ARRAY['/etc/hostname'])
%% case differential/pg-sleep
SELECT pg_sleep(0)
%% case differential/pg-sleep-qualified
SELECT pg_catalog.pg_sleep(0)
%% case differential/pg-sleep-for
SELECT pg_sleep_for('0')
%% case differential/pg-sleep-in-values
VALUES (pg_sleep(0))
%% case differential/dblink
SELECT dblink_connect('host=127.0.0.1')
%% case differential/dblink-quoted
SELECT * FROM "dblink"('x', 'select 1') AS t(a int)
%% case differential/notify
NOTIFY pginv
%% case differential/lock
LOCK TABLE payouts
%% case differential/select-for-update
SELECT * FROM payouts FOR UPDATE
%% case differential/allowed-read
SELECT id, amount FROM invoices ORDER BY id
%% case differential/allowed-insert
INSERT INTO t (x) VALUES (1)
%% case differential/allowed-two
SELECT 1; SELECT 2

%% # -------------------------------------------------------------------- (2) encodings
%% session set-sjis
%% case encoding/set-sjis
SET client_encoding = 'SJIS'
%% case encoding/sjis-backslash-eaten
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% case encoding/sjis-backslash-eaten-drop
SELECT E'ā\' ; DROP TABLE x; --'
%% case encoding/sjis-not-utf8 esc
SELECT '\x95\x5c'
%% session set-names
%% case encoding/set-names
SET NAMES 'SJIS'
%% case encoding/names-trick
SELECT E'ā\' ; TRUNCATE t; --'
%% session set-to-identifier
%% case encoding/set-to-identifier
SET client_encoding TO sjis
%% case encoding/identifier-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session set-alias
%% case encoding/alias-mskanji
SET client_encoding = 'mskanji'
%% case encoding/alias-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session set-gbk
%% case encoding/set-gbk
SET client_encoding TO 'GBK'
%% case encoding/gbk-backslash-eaten
SELECT E'丁\' ; DELETE FROM payouts WHERE id = 2; --'
%% session set-big5
%% case encoding/set-big5
SET client_encoding = 'BIG5'
%% case encoding/big5-backslash-eaten
SELECT E'亡\' ; DROP TABLE x; --'
%% session set-gb18030
%% case encoding/set-gb18030
SET client_encoding = 'GB18030'
%% case encoding/gb18030-backslash-eaten
SELECT E'丁\' ; DROP TABLE x; --'
%% session set-config
%% case encoding/set-config
SELECT set_config('client_encoding', 'SJIS', false)
%% case encoding/set-config-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session set-config-quoted
%% case encoding/set-config-quoted
SELECT "set_config"('client_encoding', 'SJIS', false)
%% case encoding/set-config-quoted-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session set-config-qualified
%% case encoding/set-config-qualified
SELECT pg_catalog.set_config('client_encoding', 'GBK', false)
%% case encoding/set-config-qualified-trick
SELECT E'丁\' ; DELETE FROM payouts WHERE id = 2; --'
%% session set-config-uident
%% case encoding/set-config-uident
SELECT U&"\0073et_config"('client_encoding', 'SJIS', false)
%% case encoding/set-config-uident-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session set-config-from
%% case encoding/set-config-from
SELECT * FROM set_config('client_' || 'encoding', 'SJIS', false)
%% case encoding/set-config-from-trick
SELECT E'ā\' ; DELETE FROM payouts WHERE id = 1; --'
%% session startup-gbk client_encoding=GBK
%% case encoding/startup-gbk-trick
SELECT E'丁\' ; DELETE FROM payouts WHERE id = 2; --'
%% case encoding/startup-gbk-plain
SELECT 'still gbk'
%% session startup-sjis client_encoding=SJIS
%% case encoding/startup-sjis-trick
SELECT E'ā\' ; DROP TABLE x; --'
%% session startup-options options=-c\x20standard_conforming_strings=off
%% case encoding/startup-options-trick
SELECT 'x\' ; DROP TABLE x; --'
%% session scs-off
%% case encoding/scs-off
SET standard_conforming_strings = off
%% case encoding/scs-off-trick
SELECT 'x\' ; DROP TABLE x; --'
%% case encoding/scs-set-config
SELECT set_config('standard_conforming_strings', 'off', false)
%% case encoding/scs-set-config-trick
SELECT 'x\' ; DELETE FROM payouts WHERE true; --'
%% case encoding/scs-reset
RESET client_encoding

%% # ------------------------------------------------------------------------ (3) names
%% session names
%% case names/set-search-path
SET search_path = secret_schema, public
%% case names/unqualified-after-search-path
SELECT * FROM secrets
%% case names/search-path-quoted
SET search_path TO "secret_schema"
%% case names/search-path-set-config
SELECT set_config('search_path', 'secret_schema', false)
%% case names/unqualified-again
TABLE secrets
%% case names/reset-search-path
RESET search_path
%% case names/three-part
SELECT * FROM billing.public.secrets
%% case names/three-part-other-db
SELECT * FROM postgres.public.secrets
%% case names/schema-secrets
SELECT * FROM secret_schema.secrets
%% case names/quoted-schema-secrets
SELECT * FROM "secret_schema"."secrets"
%% case names/upper-secrets
SELECT * FROM PUBLIC.SECRETS
%% case names/pg-temp-secrets
SELECT * FROM pg_temp.secrets
%% case names/table-to-xml
SELECT table_to_xml('secrets', true, false, '')
%% case names/table-to-xml-regclass
SELECT table_to_xml('public.secrets'::regclass, true, false, '')
%% case names/query-to-xml
SELECT query_to_xml('select * from secrets', true, false, '')
%% case names/query-to-xml-quoted
SELECT "query_to_xml"('select * from secrets', true, false, '')
%% case names/query-to-xml-qualified
SELECT pg_catalog.query_to_xml('select * from secrets', true, false, '')
%% case names/query-to-xml-uident
SELECT U&"\0071uery_to_xml"('select * from secrets', true, false, '')
%% case names/query-to-xml-and-xmlschema
SELECT query_to_xml_and_xmlschema('select * from secrets', true, false, '')
%% case names/schema-to-xml
SELECT schema_to_xml('public', true, false, '')
%% case names/database-to-xml
SELECT database_to_xml(true, false, '')
%% case names/ts-stat
SELECT * FROM ts_stat('select to_tsvector(secret) from secrets')
%% case names/ts-stat-qualified
SELECT * FROM pg_catalog.ts_stat($$select to_tsvector(secret) from secrets$$)
%% case names/cursor-to-xml
SELECT cursor_to_xml('c', 10, true, false, '')
%% case names/regclass
SELECT 'secrets'::regclass

%% # ------------------------------------------------------------------------ (4) roles
%% session roles
%% case roles/set-role
SET ROLE postgres
%% case roles/set-role-none
SET ROLE NONE
%% case roles/set-local-role
SET LOCAL ROLE postgres
%% case roles/set-role-equals
SET role = 'postgres'
%% case roles/set-session-authorization
SET SESSION AUTHORIZATION postgres
%% case roles/set-session-authorization-default
SET SESSION AUTHORIZATION DEFAULT
%% case roles/reset-role
RESET ROLE
%% case roles/reset-session-authorization
RESET SESSION AUTHORIZATION
%% case roles/set-config-role
SELECT set_config('role', 'postgres', false)
%% case roles/set-config-session-authorization
SELECT set_config('session_authorization', 'postgres', false)
%% case roles/reset-all
RESET ALL

%% # --------------------------------------------------------------- (5) unbounded writes
%% session writes
%% case writes/delete-where-true
DELETE FROM t WHERE true
%% case writes/delete-payouts-where-true
DELETE FROM payouts WHERE true
%% case writes/update-payouts-tautology
UPDATE payouts SET amount = 0 WHERE 1 = 1
%% case writes/delete-where-paren-true
DELETE FROM t WHERE (true)
%% case writes/delete-where-not-false
DELETE FROM t WHERE NOT false
%% case writes/delete-using
DELETE FROM t USING invoices WHERE true
%% case writes/delete-no-where
DELETE FROM t
%% case writes/update-no-where
UPDATE invoices SET amount = amount
%% case writes/insert-payouts
INSERT INTO payouts (amount) VALUES (1)
%% case writes/insert-payouts-qualified
INSERT INTO billing.public.payouts (amount) VALUES (1)
%% case writes/merge-payouts
MERGE INTO payouts p USING invoices i ON p.id = i.id WHEN MATCHED THEN DELETE

%% # --------------------------------------------------------- (6) SQL-level prepare/cursor
%% session prepare
%% case prepare/prepare-execute-one-message
PREPARE p AS DELETE FROM payouts; EXECUTE p
%% case prepare/prepare
PREPARE p2 AS DELETE FROM payouts
%% case prepare/execute
EXECUTE p2
%% case prepare/prepare-param
PREPARE q(int) AS DELETE FROM payouts WHERE id = $1
%% case prepare/execute-param
EXECUTE q(3)
%% case prepare/prepare-select-secrets
PREPARE s AS SELECT * FROM secrets
%% case prepare/execute-select-secrets
EXECUTE s
%% case prepare/deallocate
DEALLOCATE ALL
%% case prepare/declare-fetch
BEGIN; DECLARE c CURSOR FOR SELECT * FROM secrets; FETCH ALL c; COMMIT
%% case prepare/declare-with-hold
DECLARE h CURSOR WITH HOLD FOR TABLE secrets
%% case prepare/fetch-hold
FETCH ALL FROM h
%% case prepare/begin
BEGIN
%% case prepare/declare-in-transaction
DECLARE c2 CURSOR FOR SELECT * FROM secrets
%% case prepare/fetch-in-transaction
FETCH ALL c2
%% case prepare/move-fetch
MOVE FIRST IN c2; FETCH c2
%% case prepare/commit
COMMIT
