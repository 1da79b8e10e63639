//! PostgreSQL's own parser, through libpg_query (the `pg_query` crate links it; its grammar and
//! lexer are those of the PostgreSQL 15 server the gateway fronts).
//!
//! The crate's `parse()` also builds a table list with a node walk that is quadratic in the
//! tree's size and skips node types, so the gateway calls libpg_query's JSON entry point
//! itself and walks the whole tree generically (`walk.rs`): no node type can hide a relation.
//! Both C calls recurse with the tree's depth, so they run only on the judge's threads, whose
//! stacks are sized for the largest statement the gateway accepts (`super::super::pool`).

use std::ffi::{CStr, CString, c_char, c_int};

use super::ParseError;

#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryParseResult {
    parse_tree: *mut c_char,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

unsafe extern "C" {
    fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
    fn pg_query_free_parse_result(result: PgQueryParseResult);
}

/// The parse tree of `sql` as libpg_query's JSON (`{"version":..,"stmts":[{"stmt":{..},
/// "stmt_location":..,"stmt_len":..}]}`), or the server's own syntax error.
pub(crate) fn parse_json(sql: &str) -> Result<String, ParseError> {
    let input = CString::new(sql).map_err(|_| ParseError {
        message: "a NUL byte inside the statement".into(),
    })?;
    // SAFETY: `input` is a valid NUL-terminated string that outlives the call; libpg_query
    // copies what it needs and returns memory it owns until pg_query_free_parse_result.
    let result = unsafe { pg_query_parse(input.as_ptr()) };
    let out = if !result.error.is_null() {
        // SAFETY: a non-null error points to a PgQueryError whose message is a C string
        // owned by `result`, valid until it is freed below.
        let message = unsafe { CStr::from_ptr((*result.error).message) };
        Err(ParseError {
            message: message.to_string_lossy().into_owned(),
        })
    } else if result.parse_tree.is_null() {
        Err(ParseError {
            message: "the parser returned no tree".into(),
        })
    } else {
        // SAFETY: on success parse_tree is a NUL-terminated JSON string owned by `result`.
        let tree = unsafe { CStr::from_ptr(result.parse_tree) };
        Ok(tree.to_string_lossy().into_owned())
    };
    // SAFETY: `result` came from pg_query_parse and is freed exactly once.
    unsafe { pg_query_free_parse_result(result) };
    out
}
