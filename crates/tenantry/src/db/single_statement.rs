//! The single-statement form of a tenant statement: a read or a single-row insert rewritten so
//! that it sets the tenant itself, sent as one statement instead of `BEGIN`, the settings, the
//! statement and `COMMIT` (see [`single_statement_form`] for why that is safe). The rewriting
//! needs to know which bytes of a statement are code (not a string, a quoted name or a
//! comment), so this module holds a small SQL lexer; the scoped transaction
//! ([`super::scoped`]) only asks it for a statement's form.

/// The marker every tenant statement must contain. Checked on every call; it is cheap (a
/// substring search over a short static string) and turns a forgotten tenant filter into an
/// error in the first test that runs the statement.
const TENANT_FILTER: &str = "tenant_id = $1";

/// Whether a statement names its tenant: `tenant_id = $1` in its filter, or, for an INSERT, a
/// column list that starts with `tenant_id` and values that start with `$1`. A guard against
/// forgetting, not against malice: forced RLS is what holds against the latter.
pub(super) fn is_scoped(sql: &str) -> bool {
    let head = sql.trim_start();
    if head
        .get(..6)
        .is_some_and(|h| h.eq_ignore_ascii_case("insert"))
    {
        let compact: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        return compact.contains("(tenant_id,") && compact.contains("($1,");
    }
    sql.contains(TENANT_FILTER)
}

/// The single-statement form of a read, built once per statement and kept for the life of
/// the process (statements are `&'static str`, so there are finitely many):
///
/// ```sql
/// WITH _tenantry_scope AS MATERIALIZED (SELECT set_config('app.tenant_id', $1, true) AS tenant_id)
/// SELECT _tenantry_q.* FROM _tenantry_scope CROSS JOIN LATERAL (<the read>) _tenantry_q
/// ```
///
/// with every `$1` of the read replaced by `_tenantry_scope.tenant_id`. Why this is safe:
/// - the setting is transaction-local and the statement is its own implicit transaction (it is
///   sent with its own Sync, outside any transaction block), so it ends with the statement and
///   never reaches the connection's next user;
/// - the read refers to the scope for its tenant, so it is the inner side of a nested loop
///   whose outer side evaluates `set_config` first; its scans (and the forced RLS policy on
///   them) start only after the setting is made. Were PostgreSQL ever to evaluate the policy
///   earlier, it would see no tenant and return no rows: the failure mode is "not found", never
///   another tenant's rows;
/// - the read still says `tenant_id = <the tenant>` itself;
/// - with one scope row, the nested loop returns the read's rows in the read's own order, so an
///   inner `ORDER BY … LIMIT` (pagination) keeps its meaning.
///
/// Plain reads (a statement starting with `SELECT`) and single-row inserts qualify (the
/// insert's own argument is on `insert_form`); updates, deletes, CTEs and the `schema`
/// placement (whose `search_path` must be set before the statement is planned) keep the
/// pipelined `BEGIN … COMMIT`. Updates and deletes stay there because their rows come from the
/// table, not from the scope: nothing in the plan's shape would order the setting before the
/// policy's filter.
///
/// Worked out once per statement together with [`is_scoped`], whose answer cannot change
/// either.
pub(super) fn single_statement(sql: &'static str) -> Form {
    /// Keyed by the statement's address and length (statements are `&'static str`, so there
    /// are as many as the program has).
    static FORMS: std::sync::LazyLock<crate::memo::Memo<(usize, usize), Form>> =
        std::sync::LazyLock::new(|| crate::memo::Memo::new(usize::MAX));
    FORMS.get_or_keep((sql.as_ptr() as usize, sql.len()), || Form {
        scoped: is_scoped(sql),
        single: single_statement_form(sql).map(|s| &*Box::leak(s.into_boxed_str())),
    })
}

/// A statement as [`super::TenantDb::run`] sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Form {
    /// [`is_scoped`].
    pub(super) scoped: bool,
    /// Its single-statement form, if it has one.
    pub(super) single: Option<&'static str>,
}

/// The single-statement form [`super::TenantDb::run`] sends for a read or a single-row insert (see
/// `single_statement`), or `None` for a statement that keeps the pipelined transaction.
/// Reachable with the `internals` feature, so that a tool can send exactly the statement the
/// library sends: the benchmark's floor (a hand-written handler with only the database's safety
/// net) uses it, so the floor cannot drift from what it measures.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub fn single_statement_form(sql: &str) -> Option<String> {
    let head = sql.trim_start();
    let starts = |word: &str| {
        head.get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
    };
    let code = code_mask(sql)?;
    if starts("select") {
        let (inner, replaced) = with_scope_param(sql, &code, 0..sql.len());
        (replaced > 0).then(|| format!("{SCOPE_CTE} SELECT _tenantry_q.* FROM _tenantry_scope CROSS JOIN LATERAL ({inner}) _tenantry_q"))
    } else if starts("insert") {
        insert_form(sql, &code)
    } else {
        None
    }
}

/// The scope every single-statement form starts with: the setting, made by the statement itself.
const SCOPE_CTE: &str = "WITH _tenantry_scope AS MATERIALIZED \
     (SELECT set_config('app.tenant_id', $1, true) AS tenant_id)";

/// `INSERT INTO t (tenant_id, …) VALUES ($1, …) [ON CONFLICT …] [RETURNING …]` becomes
/// `<scope> INSERT INTO t (tenant_id, …) SELECT <scope's tenant>, … FROM _tenantry_scope …`.
/// The new row is computed from the scope's row, so `set_config` has run before the row
/// exists and before the policy's `WITH CHECK` (and, with `RETURNING`, its `USING`) is
/// evaluated on it; were it ever otherwise, the check would see no tenant and refuse the row.
/// Only one row of plain values qualifies, with `$1` only inside it (the scope is not visible
/// to `ON CONFLICT` or `RETURNING`) and no `DEFAULT` (which a select list cannot hold).
fn insert_form(sql: &str, code: &[bool]) -> Option<String> {
    let b = sql.as_bytes();
    let word_at = |i: usize, w: &str| {
        code[i]
            && b.len() >= i + w.len()
            && b[i..i + w.len()].eq_ignore_ascii_case(w.as_bytes())
            && (i == 0 || !is_ident(b[i - 1]))
            && b.get(i + w.len()).is_none_or(|c| !is_ident(*c))
    };
    // `VALUES` outside parentheses, then its parenthesised row.
    let mut depth = 0usize;
    let mut values = None;
    for i in 0..b.len() {
        if !code[i] {
            continue;
        }
        match b[i] {
            b'(' => depth += 1,
            b')' => depth = depth.checked_sub(1)?,
            _ if depth == 0 && word_at(i, "values") => {
                values = Some(i);
                break;
            }
            _ => {}
        }
    }
    let values = values?;
    let open = (values + 6..b.len()).find(|&i| !b[i].is_ascii_whitespace())?;
    if b[open] != b'(' {
        return None;
    }
    let mut depth = 0usize;
    let close = (open..b.len()).find(|&i| {
        if code[i] && b[i] == b'(' {
            depth += 1;
        } else if code[i] && b[i] == b')' {
            depth -= 1;
            return depth == 0;
        }
        false
    })?;
    let after = sql[close + 1..].trim_start();
    if after.starts_with(',') || (open + 1..close).any(|i| word_at(i, "default")) {
        return None;
    }
    let outside = scope_params(sql, code, 0..open)
        .chain(scope_params(sql, code, close + 1..sql.len()))
        .next();
    let (row, in_row) = with_scope_param(sql, code, open + 1..close);
    if in_row == 0 || outside.is_some() {
        return None;
    }
    Some(format!(
        "{SCOPE_CTE} {} SELECT {row} FROM _tenantry_scope{}",
        sql[..values].trim_end(),
        &sql[close + 1..]
    ))
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// Which bytes of `sql` are code (not inside quotes or comments); `None` for several statements.
fn code_mask(sql: &str) -> Option<Vec<bool>> {
    let b = sql.as_bytes();
    let mut code = vec![true; b.len()];
    let mut i = 0;
    let skip = |from: usize, to: usize, code: &mut Vec<bool>| {
        for c in &mut code[from..to.min(b.len())] {
            *c = false;
        }
    };
    while i < b.len() {
        let start = i;
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
                skip(start, i, &mut code);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                skip(start, i, &mut code);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                skip(start, i, &mut code);
            }
            b';' => return None,
            _ => i += 1,
        }
    }
    Some(code)
}

/// Where `$1` (not `$10`…) stands as code in the part `range` of `sql`.
fn scope_params<'a>(
    sql: &'a str,
    code: &'a [bool],
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = usize> + 'a {
    let b = sql.as_bytes();
    let end = range.end;
    range.filter(move |&i| {
        code[i]
            && b[i] == b'$'
            && i + 1 < end
            && b[i + 1] == b'1'
            && !b.get(i + 2).is_some_and(u8::is_ascii_digit)
    })
}

/// The part `range` of `sql` with every `$1` replaced by the scope's tenant, and how many were.
fn with_scope_param(sql: &str, code: &[bool], range: std::ops::Range<usize>) -> (String, usize) {
    let mut out = String::with_capacity(range.len() + 64);
    let (mut copied, mut replaced) = (range.start, 0);
    for i in scope_params(sql, code, range.clone()) {
        out.push_str(&sql[copied..i]);
        out.push_str("_tenantry_scope.tenant_id");
        copied = i + 2;
        replaced += 1;
    }
    out.push_str(&sql[copied..range.end]);
    (out, replaced)
}

#[cfg(test)]
mod tests {
    use super::is_scoped;

    #[test]
    fn single_statement_forms() {
        use super::single_statement_form as f;
        let w = f("SELECT a FROM t WHERE tenant_id = $1 AND id = $2 LIMIT $10").unwrap();
        assert!(w.starts_with(
            "WITH _tenantry_scope AS MATERIALIZED (SELECT set_config('app.tenant_id', $1, true)"
        ));
        assert!(w.contains("(SELECT a FROM t WHERE tenant_id = _tenantry_scope.tenant_id AND id = $2 LIMIT $10) _tenantry_q"), "{w}");
        // Quotes and comments are left alone.
        let w = f("SELECT '$1', \"$1\" FROM t -- $1\n WHERE tenant_id = $1 /* $1 */").unwrap();
        assert!(w.contains("SELECT '$1', \"$1\" FROM t -- $1\n WHERE tenant_id = _tenantry_scope.tenant_id /* $1 */"), "{w}");
        // A single-row insert: its row comes from the scope.
        let w =
            f("INSERT INTO t (tenant_id, id, v) VALUES ($1, $2, lower($3)) RETURNING id").unwrap();
        assert!(w.starts_with("WITH _tenantry_scope AS MATERIALIZED"), "{w}");
        assert!(
            w.ends_with(" INSERT INTO t (tenant_id, id, v) SELECT _tenantry_scope.tenant_id, $2, lower($3) FROM _tenantry_scope RETURNING id"),
            "{w}"
        );
        let w = f("insert into t\n (tenant_id, id)\n values\n ($1, $2)\n on conflict do nothing")
            .unwrap();
        assert!(w.ends_with("SELECT _tenantry_scope.tenant_id, $2 FROM _tenantry_scope\n on conflict do nothing"), "{w}");
        // `VALUES` in a quoted name, a string or a comment is not the row.
        let w =
            f("INSERT INTO t (tenant_id, \"values\") /* values (x) */ VALUES ($1, 'values (y)')")
                .unwrap();
        assert!(
            w.ends_with("SELECT _tenantry_scope.tenant_id, 'values (y)' FROM _tenantry_scope"),
            "{w}"
        );
        // Several rows, DEFAULT, `$1` outside the row, INSERT … SELECT: the transaction.
        assert!(f("INSERT INTO t (tenant_id, id) VALUES ($1, 1), ($1, 2)").is_none());
        assert!(f("INSERT INTO t (tenant_id, id, at) VALUES ($1, 1, DEFAULT)").is_none());
        assert!(f("INSERT INTO t (tenant_id, id) VALUES ($1, 1) RETURNING $1").is_none());
        assert!(f("INSERT INTO t (tenant_id, id) SELECT $1, id FROM u").is_none());
        assert!(f("INSERT INTO t (tenant_id, id) VALUES ($1, 1); DELETE FROM t").is_none());
        // `DEFAULT` as part of a longer word is a value.
        assert!(f("INSERT INTO t (tenant_id, v) VALUES ($1, default_v($2))").is_some());
        // Updates, deletes, CTEs, several statements and reads without the tenant keep the
        // transaction.
        assert!(f("UPDATE t SET a = 1 WHERE tenant_id = $1").is_none());
        assert!(f("DELETE FROM t WHERE tenant_id = $1").is_none());
        assert!(
            f("WITH x AS (DELETE FROM t WHERE tenant_id = $1 RETURNING *) SELECT * FROM x")
                .is_none()
        );
        assert!(f("SELECT 1 WHERE tenant_id = $1; SELECT 2").is_none());
        assert!(f("SELECT a FROM t WHERE id = $2").is_none());
    }

    #[test]
    fn scoped_statements() {
        assert!(is_scoped(
            "SELECT * FROM t WHERE tenant_id = $1 AND id = $2"
        ));
        assert!(is_scoped("INSERT INTO t (tenant_id, id) VALUES ($1, $2)"));
        assert!(is_scoped(
            "insert into t\n  (tenant_id, id)\n  values ($1, $2)"
        ));
        assert!(!is_scoped("SELECT * FROM t WHERE id = $2"));
        assert!(!is_scoped("INSERT INTO t (id, tenant_id) VALUES ($2, $1)"));
        assert!(!is_scoped("DELETE FROM t"));
    }
}
