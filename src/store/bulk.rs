//! The capture's multi-row inserts, bound without copies.
//!
//! rusqlite binds every text and blob as `SQLITE_TRANSIENT`: SQLite copies the value into memory of its
//! own and frees it at the next bind. For the change log that is every document copied once more, and
//! an allocation and a free per text value, on the capture's hottest path (docs/benchmarks.md,
//! "Capture CPU (issue 21)", step 8). A [`Bulk`] statement binds `SQLITE_STATIC` instead, straight
//! from the caller's buffers.
//!
//! Invariants:
//! - SQLite never holds a pointer past the borrow: the values are borrowed for the whole of
//!   [`Bulk::execute`], which resets the statement and clears its bindings before it returns, on
//!   success and on error alike.
//! - A statement is finalized when dropped. [`crate::store::Store`] declares its statements before its
//!   connection, so they are finalized before the connection closes, and never outlive it.
//! - Schema changes are handled by SQLite: statements are prepared with `sqlite3_prepare_v3`, which
//!   prepares again on `SQLITE_SCHEMA`.

use std::ffi::{c_char, c_int, CStr};
use std::ptr::NonNull;

use rusqlite::{ffi, Connection};

/// One value to bind, borrowed from the caller for the statement's run.
#[derive(Debug, Clone, Copy)]
pub(super) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    Null,
}

/// A prepared statement bound without copies (see the module's documentation).
pub(super) struct Bulk {
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// The statement's parameter count: [`Bulk::execute`] must bind exactly this many.
    params: usize,
}

impl Bulk {
    /// Prepares `sql` on `conn`, to be run many times.
    pub(super) fn prepare(conn: &Connection, sql: &str) -> rusqlite::Result<Bulk> {
        // SAFETY: `conn` is open for the call; the SQL's pointer and length come from a live &str.
        let db = unsafe { conn.handle() };
        let mut stmt = std::ptr::null_mut();
        let len = c_int::try_from(sql.len())
            .map_err(|_| rusqlite::Error::ToSqlConversionFailure("statement too long".into()))?;
        // SAFETY: as above; `stmt` is written by SQLite, and only read when it reports success.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr() as *const c_char,
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(failure(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some("an empty statement".into()),
            )
        })?;
        // SAFETY: `stmt` was just prepared and is not finalized.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) } as usize;
        Ok(Bulk { stmt, params })
    }

    /// Binds `values` in order and runs the statement to its end; returns the rows it changed.
    /// `conn` must be the connection the statement was prepared on.
    pub(super) fn execute(
        &mut self,
        conn: &Connection,
        values: &[Param<'_>],
    ) -> rusqlite::Result<usize> {
        if values.len() != self.params {
            return Err(rusqlite::Error::InvalidParameterCount(
                values.len(),
                self.params,
            ));
        }
        // SAFETY: `conn` is the statement's open connection.
        let db = unsafe { conn.handle() };
        let stmt = self.stmt.as_ptr();
        let run = || -> rusqlite::Result<usize> {
            for (i, value) in values.iter().enumerate() {
                let at = (i + 1) as c_int;
                // SAFETY: `stmt` is prepared and reset (never left mid-step). Texts and blobs are
                // bound SQLITE_STATIC from slices borrowed for this whole call; they are unbound
                // (clear_bindings) before it returns, so SQLite reads them only while they live.
                let rc = unsafe {
                    match *value {
                        Param::Int(n) => ffi::sqlite3_bind_int64(stmt, at, n),
                        Param::Text(text) => ffi::sqlite3_bind_text64(
                            stmt,
                            at,
                            text.as_ptr() as *const c_char,
                            text.len() as u64,
                            ffi::SQLITE_STATIC(),
                            ffi::SQLITE_UTF8 as u8,
                        ),
                        Param::Blob(bytes) => ffi::sqlite3_bind_blob64(
                            stmt,
                            at,
                            bytes.as_ptr() as *const std::ffi::c_void,
                            bytes.len() as u64,
                            ffi::SQLITE_STATIC(),
                        ),
                        Param::Null => ffi::sqlite3_bind_null(stmt, at),
                    }
                };
                if rc != ffi::SQLITE_OK {
                    return Err(failure(db, rc));
                }
            }
            // SAFETY: every parameter is bound to a live value.
            match unsafe { ffi::sqlite3_step(stmt) } {
                ffi::SQLITE_DONE => Ok(unsafe { ffi::sqlite3_changes(db) } as usize),
                ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
                rc => Err(failure(db, rc)),
            }
        };
        let result = run();
        // SAFETY: `stmt` is prepared; after these calls it holds no pointer into `values`.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        result
    }
}

// SAFETY: a statement may move to another thread with its connection, as rusqlite's Connection does
// (Send, not Sync): the store moves both together and uses them from one thread at a time. `Bulk`
// stays !Sync, so it is never used from two threads at once.
unsafe impl Send for Bulk {}

impl Drop for Bulk {
    fn drop(&mut self) {
        // SAFETY: the statement is finalized once, here, while its connection is open (module invariant).
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The error SQLite reported on `db` for result code `rc`, as rusqlite reports its own (so a full disk
/// is recognised by its code).
fn failure(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is open; the message is copied before any other call on it.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db);
        let message = ffi::sqlite3_errmsg(db);
        let message =
            (!message.is_null()).then(|| CStr::from_ptr(message).to_string_lossy().into_owned());
        (code, message)
    };
    // The extended code names the same failure more precisely, when SQLite kept it.
    let code = if code & 0xff == rc & 0xff { code } else { rc };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL, c BLOB, d TEXT)",
        )
        .unwrap();
        conn
    }

    #[test]
    fn values_bound_from_borrowed_buffers_are_stored_after_the_buffers_are_gone() {
        let conn = conn();
        let mut bulk = Bulk::prepare(
            &conn,
            "INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, ?), (?, ?, ?, ?)",
        )
        .unwrap();
        {
            let text = String::from("héllo");
            let blob = vec![0u8, 1, 2, 255];
            let empty = String::new();
            let n = bulk
                .execute(
                    &conn,
                    &[
                        Param::Int(1),
                        Param::Text(&text),
                        Param::Blob(&blob),
                        Param::Null,
                        Param::Int(2),
                        Param::Text(&empty),
                        Param::Blob(&[]),
                        Param::Text("x"),
                    ],
                )
                .unwrap();
            assert_eq!(n, 2);
        }
        type Row = (i64, String, Option<Vec<u8>>, Option<String>);
        let rows: Vec<Row> = conn
            .prepare("SELECT a, b, c, d FROM t ORDER BY a")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "héllo".to_string(), Some(vec![0, 1, 2, 255]), None),
                (2, String::new(), Some(Vec::new()), Some("x".to_string())),
            ]
        );
    }

    #[test]
    fn a_failed_run_reports_sqlites_error_and_leaves_the_statement_usable() {
        let conn = conn();
        let mut bulk = Bulk::prepare(&conn, "INSERT INTO t (a, b) VALUES (?, ?)").unwrap();
        bulk.execute(&conn, &[Param::Int(1), Param::Text("a")])
            .unwrap();
        let err = bulk
            .execute(&conn, &[Param::Int(1), Param::Text("b")])
            .unwrap_err();
        match err {
            rusqlite::Error::SqliteFailure(e, Some(message)) => {
                assert_eq!(e.code, rusqlite::ErrorCode::ConstraintViolation);
                assert!(message.contains("UNIQUE"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let err = bulk
            .execute(&conn, &[Param::Int(2), Param::Null])
            .unwrap_err();
        assert!(err.to_string().contains("NOT NULL"), "{err}");
        assert!(matches!(
            bulk.execute(&conn, &[Param::Int(2)]),
            Err(rusqlite::Error::InvalidParameterCount(1, 2))
        ));
        bulk.execute(&conn, &[Param::Int(2), Param::Text("c")])
            .unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
    }
}
