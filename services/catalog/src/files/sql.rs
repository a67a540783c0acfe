//! Hand-written SQL with bind parameters in the backend's style (`?` or `$n`): the file index
//! writes and reads millions of rows, where building sea-orm models would cost more than the
//! database does.

use sea_orm::{DbBackend, Statement, Value};

/// A statement being written.
pub(crate) struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub(crate) fn new(backend: DbBackend, text: &str) -> Self {
        Self { backend, text: text.to_owned(), values: Vec::new() }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a bind parameter holding `value`.
    pub(crate) fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.values.len().to_string());
            }
            _ => self.text.push('?'),
        }
        self
    }

    pub(crate) fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}
