//! Writes that commit together, one of them deciding whether any is made.
//!
//! A worker's attempt and a batch's outcome are each a fenced update of the batch (the gate:
//! it changes the batch's row only while the lease holds) and the writes that go with it: the
//! members settled, the audit log. In a transaction that is a trip to the database for each
//! write plus BEGIN and COMMIT. On PostgreSQL a [`Chain`] is one statement instead, each write
//! a part of one `WITH`, committed on its own. On SQLite it is one script in a transaction: its
//! writes in order, handed to the driver's thread at once, rolled back when the gate changed
//! nothing.

use super::db::{Pool, Sql, Tx};
use super::StoreError;

/// Writes that commit together when the gate changes exactly one row, and not at all otherwise.
///
/// On PostgreSQL every part sees the database as it was before the chain; on SQLite each sees
/// what the parts before it wrote. So a part must not depend on what another writes, and one
/// that reads rows another part writes must leave those rows out itself (the attempt's
/// exemption check leaves out the members its own settle moves).
#[derive(Debug)]
pub(super) struct Chain {
    gate: Sql,
    /// Each ends with a `WHERE` clause that `AND` can extend.
    parts: Vec<Sql>,
    /// How many of `parts` run before the gate where the writes run in order (SQLite, and a
    /// chain run inside a transaction).
    before_gate: usize,
}

impl Chain {
    /// A chain gated by `gate`: an `UPDATE` without `RETURNING`. The chain writes only if it
    /// changes exactly one row.
    pub(super) fn new(gate: Sql) -> Chain {
        Chain {
            gate,
            parts: Vec::new(),
            before_gate: 0,
        }
    }

    /// Adds writes to run before the gate, where the writes run in order: each an `UPDATE`,
    /// or an `INSERT ... SELECT`, that ends with a `WHERE` clause of conditions joined by `AND`
    /// (PostgreSQL adds the gate's to it).
    pub(super) fn first(&mut self, qs: impl IntoIterator<Item = Sql>) -> &mut Chain {
        for q in qs {
            self.parts.insert(self.before_gate, q);
            self.before_gate += 1;
        }
        self
    }

    /// Adds writes to run after the gate, of the same form as [`Chain::first`]'s.
    pub(super) fn then(&mut self, qs: impl IntoIterator<Item = Sql>) -> &mut Chain {
        self.parts.extend(qs);
        self
    }

    /// The chain as one PostgreSQL statement that returns how many rows the gate changed.
    fn statement(self) -> Sql {
        let mut q = Sql::new("WITH gate AS (");
        q.append(self.gate);
        q.push(" RETURNING 1)");
        for (i, part) in self.parts.into_iter().enumerate() {
            q.push(&format!(", w{i} AS ("));
            q.append(part);
            q.push(" AND EXISTS (SELECT 1 FROM gate))");
        }
        q.push(" SELECT COUNT(*) FROM gate");
        q
    }

    /// Runs the chain and commits it; false when the gate changed no row (nothing is written).
    pub(super) async fn run(self, pool: &Pool) -> Result<bool, StoreError> {
        if pool.is_postgres() {
            let (n,): (i64,) = pool.fetch_one(self.statement()).await?;
            return Ok(n == 1);
        }
        let mut tx = pool.begin().await?;
        if !self.run_in(&mut tx).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Runs the chain's writes in order inside `tx`; false when the gate changed no row, and
    /// the caller must then roll `tx` back.
    pub(super) async fn run_in(self, tx: &mut Tx) -> Result<bool, StoreError> {
        if !tx.is_postgres() {
            let changed: Vec<(i64,)> = tx.fetch_all(self.script()).await?;
            return Ok(changed == [(1,)]);
        }
        let mut parts = self.parts.into_iter();
        for part in parts.by_ref().take(self.before_gate) {
            tx.execute(part).await?;
        }
        if tx.execute(self.gate).await? != 1 {
            return Ok(false);
        }
        for part in parts {
            tx.execute(part).await?;
        }
        Ok(true)
    }

    /// The chain as one SQLite script, its statements in order, that returns how many rows
    /// the gate changed: handed to SQLite's driver's thread once, not once per write. The writes
    /// after the gate run whatever it changed, and are rolled back with the rest when it
    /// changed none.
    fn script(self) -> Sql {
        let mut q = Sql::new("");
        let mut parts = self.parts.into_iter();
        for part in parts.by_ref().take(self.before_gate) {
            q.append(part).push(";\n");
        }
        q.append(self.gate).push(";\nSELECT changes();\n");
        for part in parts {
            q.append(part).push(";\n");
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::super::db::Value;
    use super::*;

    /// A write, the gate, a write: binds 7, 1 | 8, 2 | 9.
    fn sample() -> Chain {
        let mut c = Chain::new(
            Sql::new("UPDATE b SET y = $1 WHERE id = $2")
                .bind(8)
                .bind(2),
        );
        c.then([Sql::new("INSERT INTO c (z) SELECT $1 WHERE 1 = 1").bind(9)])
            .first([Sql::new("UPDATE a SET x = $1 WHERE id = $2")
                .bind(7)
                .bind(1)]);
        c
    }

    fn ints(q: &Sql) -> Vec<i64> {
        q.values()
            .iter()
            .map(|v| match v {
                Value::Int(Some(i)) => *i,
                other => panic!("unexpected value {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_chain_is_one_statement_whose_writes_wait_on_the_gate() {
        let q = sample().statement();
        assert_eq!(
            q.text(),
            "WITH gate AS (UPDATE b SET y = $1 WHERE id = $2 RETURNING 1), \
             w0 AS (UPDATE a SET x = $3 WHERE id = $4 AND EXISTS (SELECT 1 FROM gate)), \
             w1 AS (INSERT INTO c (z) SELECT $5 WHERE 1 = 1 AND EXISTS (SELECT 1 FROM gate)) \
             SELECT COUNT(*) FROM gate"
        );
        assert_eq!(ints(&q), [8, 2, 7, 1, 9]);
    }

    #[test]
    fn on_sqlite_a_chain_is_one_script_that_says_what_the_gate_changed() {
        let q = sample().script();
        assert_eq!(
            q.text(),
            "UPDATE a SET x = $1 WHERE id = $2;\n\
             UPDATE b SET y = $3 WHERE id = $4;\nSELECT changes();\n\
             INSERT INTO c (z) SELECT $5 WHERE 1 = 1;\n"
        );
        assert_eq!(ints(&q), [7, 1, 8, 2, 9]);
    }
}
