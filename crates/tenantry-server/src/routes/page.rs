//! Cursor pagination: `?limit=` (1..=200, default 50) and `?cursor=`; bodies are
//! `{"items": [...], "next_cursor": ... | null}`.

use serde::{Deserialize, Serialize};
use tenantry::http::Object;
use tenantry::http::{FieldError, Problem, WriteJson};
use uuid::Uuid;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request. Fetch `fetch()` rows; `finish` trims and sets the cursor.
#[derive(Debug, Clone, Copy)]
pub struct PageReq<C> {
    pub limit: i64,
    pub after: Option<C>,
}

impl<C> PageReq<C> {
    /// One more row than the page, to know whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

pub fn limit(limit: Option<i64>) -> Result<i64, FieldError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(FieldError::new("limit", "must be between 1 and 200")),
    }
}

/// Pages over uuid ids (the cursor is the last id of the previous page).
pub fn uuid_page(limit_q: Option<i64>, cursor: Option<&str>) -> Result<PageReq<Uuid>, Problem> {
    let mut errors = Vec::new();
    let limit = limit(limit_q).unwrap_or_else(|e| {
        errors.push(e);
        0
    });
    let after = match cursor {
        None => None,
        Some(c) => match Uuid::try_parse(c) {
            Ok(u) => Some(u),
            Err(_) => {
                errors.push(FieldError::new("cursor", "not a cursor from this list"));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok(PageReq { limit, after })
    } else {
        Err(Problem::validation(errors))
    }
}

/// A page of a list: `next_cursor` is null on the last page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T: WriteJson> WriteJson for Page<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        Object::new(out)
            .field("items", &self.items)
            .field("next_cursor", &self.next_cursor)
            .end()
    }

    fn json_len_hint(&self) -> usize {
        self.items.json_len_hint() + 64
    }
}

impl<T> Page<T> {
    /// Builds a page from `fetch()` rows; `cursor_of` gives an item's cursor.
    pub fn from_rows(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}
