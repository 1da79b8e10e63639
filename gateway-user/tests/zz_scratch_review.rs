// TEMPORARY scratch file for a security review; delete after use.
use gateway_user::protocol::postgres::{
    config::{PostgresFile, PostgresTarget},
    judge::judge,
    rules::Who,
    shape::Shape,
    sql::classify_default,
};

fn target() -> PostgresTarget {
    let text = std::fs::read_to_string("/tmp/review/policy.toml").unwrap();
    let f: PostgresFile = toml::from_str(&text).unwrap();
    PostgresTarget::validate(f).unwrap()
}

#[test]
fn scratch_review() {
    let t = target();
    let input = std::fs::read_to_string("/tmp/review/input.txt").unwrap();
    for block in input.split("\n====\n") {
        let block = block.trim_matches('\n');
        if block.is_empty() {
            continue;
        }
        if let Some((a, b)) = block.split_once("\n~~~~\n") {
            let (sa, sb) = (Shape::of(a), Shape::of(b));
            println!(
                "SHAPE {:?} | {:?} -> equal={} plain={:?}",
                a,
                b,
                sa.is_some() && sa == sb,
                matches!(sa, Some(Shape::Plain(_)))
            );
            continue;
        }
        let sql = block;
        match classify_default(sql) {
            Ok(v) => {
                for s in &v {
                    println!(
                        "SQL {:?}\n  kind={:?} reads={:?} writes={:?} fns={:?} every={} settings={:?} sqltext={} lit={} cols={:?} sess={:?} copy_out={}",
                        sql,
                        s.kind,
                        s.reads,
                        s.writes,
                        s.functions,
                        s.reads_everything,
                        s.settings,
                        s.runs_sql_text,
                        s.reads_literals,
                        s.columns,
                        s.session,
                        s.copy_out
                    );
                }
            }
            Err(e) => println!("SQL {:?}\n  ERR {}", sql, e),
        }
        let j = judge("p", &t, &Who::default(), sql);
        println!(
            "  => {} rule={} by_shape={}",
            j.verdict(),
            j.rule,
            j.by_shape
        );
    }
}

struct Rng(u64);
impl Rng {
    fn n(&mut self, m: usize) -> usize { self.0 ^= self.0 << 13; self.0 ^= self.0 >> 7; self.0 ^= self.0 << 17; (self.0 % m as u64) as usize }
}
fn lit(r: &mut Rng, kind: u8) -> String {
    if kind == 0 {
        let len = 1 + r.n(9);
        (0..len).map(|_| (b'0' + r.n(10) as u8) as char).collect()
    } else {
        let alpha = ["a", " ", "\n", "-", "*", "/", ".", "e", "1", ":", ";", "$", "\"", "U&", "\r", "--", "/*", "*/"];
        let len = r.n(5);
        let body: String = (0..len).map(|_| alpha[r.n(alpha.len())]).collect();
        format!("'{body}'")
    }
}
fn toks(sql: &str) -> Option<Vec<(i32, String)>> {
    let t = pg_query::scan(sql).ok()?.tokens;
    let lits = [pg_query::protobuf::Token::Sconst as i32, pg_query::protobuf::Token::Iconst as i32, pg_query::protobuf::Token::Fconst as i32];
    Some(t.iter().map(|t| (t.token, if lits.contains(&t.token) { String::new() } else { sql[t.start as usize..t.end as usize].to_owned() })).collect())
}

#[test]
fn scratch_fuzz_plain() {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let pieces = ["<", ">", "+", "-", "/", ".", ":", "=", "*", ",", "(", ")", ";", " ", " ", "\n", "\t", "\r", "a", "e", "E", "x", "U", "B", "N", "select", "from", "_", "a1", "::", "SELECT", "t", "LIMIT", "INT"];
    let (mut tried, mut plain_n, mut bad) = (0, 0, 0);
    for _ in 0..400000 {
        tried += 1;
        let n = 1 + r.n(10);
        let mut a_parts: Vec<(Option<u8>, String)> = Vec::new();
        for _ in 0..n {
            match r.n(5) {
                0 => a_parts.push((Some(0), lit(&mut r, 0))),
                1 => a_parts.push((Some(1), lit(&mut r, 1))),
                _ => a_parts.push((None, pieces[r.n(pieces.len())].to_owned())),
            }
        }
        let a: String = a_parts.iter().map(|p| p.1.clone()).collect();
        let b: String = a_parts.iter().map(|p| match p.0 { Some(k) => lit(&mut r, k), None => p.1.clone() }).collect();
        let (sa, sb) = (Shape::of(&a), Shape::of(&b));
        if !matches!(sa, Some(Shape::Plain(_))) || sa != sb { continue; }
        plain_n += 1;
        let (ta, tb) = (toks(&a), toks(&b));
        let pa = pg_query::parse(&a).is_ok();
        let pb = pg_query::parse(&b).is_ok();
        if ta != tb || pa != pb {
            bad += 1;
            if bad < 15 { println!("MISMATCH {:?} / {:?}\n  {:?}\n  {:?} parse {} {}", a, b, ta, tb, pa, pb); }
        }
    }
    println!("tried {tried} plain-equal {plain_n} bad {bad}");
}
