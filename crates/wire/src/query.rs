//! The query body of `POST /enrollments/query` and friends; only "everything" is understood.

/// Checks that `query` selects everything from `collection` (case-insensitive, any whitespace).
///
/// DPS documents a SQL-like language, but what its SDKs and samples send selects everything: `*` (the Node
/// samples), `SELECT *` (the Python samples), `SELECT * FROM enrollments` (the documentation, the C# and Java
/// samples); anything else is refused rather than half-understood.
pub fn check_select_all(query: &str, collection: &str) -> Result<(), String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    match words.as_slice() {
        ["*"] => Ok(()),
        [select, "*"] if select.eq_ignore_ascii_case("select") => Ok(()),
        [select, star, from, target]
            if select.eq_ignore_ascii_case("select")
                && *star == "*"
                && from.eq_ignore_ascii_case("from")
                && target.eq_ignore_ascii_case(collection) =>
        {
            Ok(())
        }
        _ => Err(format!("only \"SELECT * FROM {collection}\" (or \"SELECT *\", or \"*\") is supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_all_is_understood_in_any_case_and_spacing() {
        assert!(check_select_all("SELECT * FROM enrollments", "enrollments").is_ok());
        assert!(check_select_all("  select   *\nfrom EnrollmentGroups ", "enrollmentGroups").is_ok());
        assert!(check_select_all("SELECT * FROM enrollments WHERE x=1", "enrollments").is_err());
        assert!(check_select_all("SELECT * FROM enrollmentGroups", "enrollments").is_err());
        assert!(check_select_all("", "enrollments").is_err());
        // What the SDKs' samples send.
        assert!(check_select_all("*", "enrollments").is_ok());
        assert!(check_select_all("select *", "enrollmentGroups").is_ok());
        assert!(check_select_all("SELECT *, etag", "enrollments").is_err());
    }
}
