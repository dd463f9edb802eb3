//! A small pool of blocking connections, each with its prepared statements.
//!
//! The runtime calls a store from one writer thread and a few blocking readers, so a
//! `Mutex<Vec<Conn>>` is all the pooling needed: a call takes an idle connection (or
//! opens one), and gives it back unless it broke.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement};

/// Idle connections kept beyond this number are closed.
const MAX_IDLE: usize = 8;

/// One connection and the statements prepared on it (by their SQL text).
pub(super) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    pub(super) fn open(config: &Config) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params)
    }

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }

    /// Runs statements without parameters (BEGIN, COMMIT, migrations).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The idle connections.
pub(super) struct Pool {
    config: Config,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub(super) fn new(config: Config) -> Pool {
        Pool {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one.
    pub(super) fn get(&self) -> Result<Conn, postgres::Error> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Conn::open(&self.config),
        }
    }

    /// Gives `conn` back (a broken one is dropped).
    pub(super) fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Every idle connection, to close them.
    pub(super) fn drain(&self) -> Vec<Conn> {
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
