//! The query body of `POST /enrollments/query` and friends; only `SELECT * FROM <collection>` is understood.

/// Checks that `query` selects everything from `collection` (case-insensitive, any whitespace).
///
/// DPS documents a SQL-like language, but its SDKs only ever send `SELECT * FROM enrollments` and
/// `SELECT * FROM enrollmentGroups`; anything else is refused rather than half-understood.
pub fn check_select_all(query: &str, collection: &str) -> Result<(), String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    match words.as_slice() {
        [select, star, from, target]
            if select.eq_ignore_ascii_case("select")
                && *star == "*"
                && from.eq_ignore_ascii_case("from")
                && target.eq_ignore_ascii_case(collection) =>
        {
            Ok(())
        }
        _ => Err(format!("only \"SELECT * FROM {collection}\" is supported")),
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
    }
}
