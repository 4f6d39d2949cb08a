//! Which tables the capture stores into which collections, and bringing backfills in: the
//! bindings' states (by table OID), a table renamed, recreated, retyped or leaving the publication,
//! and the backfills read beside the stream.
//!
//! Invariants: a table is known by its OID, so a rename keeps its collection and a recreated table
//! is read again; changes of a table being backfilled are held and replayed only past its snapshot
//! point, so a backfilled row is never overwritten by an older change nor stored twice; only the
//! newest backfill of a table is brought in (a table recreated while one ran supersedes it).

use super::*;

/// The capture's own record of a binding (kept in the store's meta, apart from the definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BindingState {
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) collection: String,
    /// The binding's backfill counter this state reflects.
    pub(super) backfill: u32,
    /// Set while a backfill is being read: its snapshot's point.
    #[serde(default)]
    pub(super) backfilling: Option<Lsn>,
    /// Whether the collection was live before this backfill.
    #[serde(default)]
    pub(super) was_live: bool,
    /// The table's OID (pgoutput's relation id): the binding follows the table through renames.
    #[serde(default)]
    pub(super) oid: Option<u32>,
    /// OIDs of tables this binding followed before (dropped, then created again under the name):
    /// their changes still in the stream go to the same collection, ahead of the re-backfill that
    /// replaces their rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) retired: Vec<u32>,
    /// Set when the table was found outside the publication while it was bound (with the checkpoint
    /// then): the stream has none of its changes from some point before that on, and no slot can
    /// send them again. Its collection is read again (a re-backfill) once the table is back in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) left_publication: Option<Lsn>,
    /// Its membership of the publication when last looked at ([`membership`]'s token): a new one
    /// means it was dropped from the publication and added back since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) published_as: Option<String>,
}

impl BindingState {
    pub(super) fn handling(&self) -> Handling {
        match self.backfilling {
            Some(point) => Handling::Hold {
                point,
                was_live: self.was_live,
            },
            None => Handling::Store,
        }
    }
}

pub(super) const STATE_KEY: &str = "bindings_state";

/// A backfill running alongside the stream, in its own snapshot, into a staging store.
pub(super) struct RunningBackfill {
    pub(super) tables: Vec<(String, String)>,
    pub(super) staging: PathBuf,
    /// Its snapshot's point: it is brought in once the stream has stored everything before it, so no
    /// change older than the snapshot lands on top of the snapshot's rows.
    pub(super) point: Lsn,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// A bound table whose collection must be read again before its changes can be stored: the table
/// was dropped and created again under its name, or a key column's type changed.
pub(super) struct Rebackfill {
    pub(super) schema: String,
    pub(super) table: String,
    /// The OID the table was seen under (a Relation message may come from a table dropped since).
    pub(super) seen: u32,
    /// What happened and what the capture does about it, for the log and the report.
    pub(super) notice: String,
}

/// How a relation's identity resolved against the bindings.
pub(super) enum Identity {
    /// The binding at this index of the capture's states.
    Bound(usize),
    /// Not bound: its changes are dropped.
    Unbound,
    /// Bound, but its collection is read again first.
    Rebackfill(Rebackfill),
}

pub(super) fn live_state(binding: &Binding) -> BindingState {
    BindingState {
        schema: binding.schema.clone(),
        table: binding.table.clone(),
        collection: binding.collection.clone(),
        backfill: binding.backfill,
        backfilling: None,
        was_live: false,
        oid: binding.oid,
        retired: Vec::new(),
        left_publication: None,
        published_as: None,
    }
}

/// The capture's binding states as last committed.
pub(super) fn load_states(store: &Store) -> Result<Vec<BindingState>> {
    match store.meta(STATE_KEY)? {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            Error::internal(format!(
                "store: the capture's binding state is unreadable: {e}"
            ))
        }),
        None => Ok(Vec::new()),
    }
}

/// The OID of the table now named `schema.table`, if there is one.
pub(super) async fn table_oid(sql: &Client, schema: &str, table: &str) -> Result<Option<u32>> {
    Ok(sql
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
        .map(|r| r.get(0)))
}

/// `"schema"."table"`, for notices.
pub(super) fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", sql::ident(schema), sql::ident(table))
}

/// The folder, in the store's, that holds the staging stores of backfills read beside the stream.
pub(super) const STAGING: &str = "backfills";

/// Removes the staging stores an earlier run's backfills left behind: a stop or a crash while they
/// ran. None is ever brought in (its snapshot ended with its session, and the backfill starts over
/// under a new name), and each may be as large as its tables. Called before this run starts any
/// backfill, under the store's writer lock, so nothing in use is removed.
pub(super) fn discard_interrupted_staging(store_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(store_dir.join(STAGING)) else {
        return;
    };
    for entry in entries.flatten() {
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                staging = %entry.path().display(),
                "removed the staging store of a backfill an earlier run left unfinished"
            ),
            Err(e) => tracing::warn!(
                staging = %entry.path().display(),
                error = %e,
                "could not remove the staging store of an unfinished backfill"
            ),
        }
    }
}

/// The store meta key naming the slot a first backfill created (so an interrupted one is recognised).
pub(super) const OWNED: &str = "backfill_slot";

/// Creates the slot with an exported snapshot, reads the tables in it, and commits their rows with the
/// slot's consistent point as the checkpoint. A slot left by an interrupted backfill (recorded in the
/// store) is replaced; any other existing slot never reaches here (its snapshot is gone, so the
/// tables are read alongside the stream instead) and is refused should it appear in between.
pub(super) async fn initial_backfill(
    options: &CaptureOptions,
    tables: &[Binding],
    state: &str,
    sql: &Client,
    store: &mut Store,
) -> Result<u64> {
    if slot::find(sql, &options.slot).await?.is_some() {
        if store.meta(OWNED)?.as_deref() == Some(options.slot.as_str()) {
            tracing::warn!(slot = %options.slot, "an earlier backfill was interrupted; starting it over with a new slot");
            sql.execute("SELECT pg_drop_replication_slot($1)", &[&options.slot])
                .await
                .map_err(|e| {
                    Error::from_postgres(&e, "dropping the interrupted backfill's slot")
                })?;
        } else {
            return Err(Error::invalid_input(
                "slot",
                format!(
                    "{} exists already; a consistent backfill needs a new slot created with its snapshot: choose another slot \
                     name, drop this one (SELECT pg_drop_replication_slot({})), or capture only new changes (--no-backfill)",
                    sql::ident(&options.slot),
                    sql::literal(&options.slot)
                ),
            ));
        }
    }
    // Recorded before the slot exists, so a crash in between is recognised next time.
    store.set_meta(OWNED, &options.slot)?;
    store.commit(Lsn(0))?;
    let session =
        crate::source::replication::SnapshotSession::create(&options.spec, &options.slot, false)
            .await?;
    let mut progress = |p: &crate::capture::backfill::BackfillProgress| {
        if let Some(callback) = &options.backfill_progress {
            callback(p);
        }
    };
    let tables: Vec<(Binding, bool)> = tables.iter().map(|b| (b.clone(), false)).collect();
    let result = crate::capture::backfill::run(
        &options.spec,
        store,
        &tables,
        &session.snapshot,
        session.consistent_point,
        &mut progress,
    )
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            store.rollback()?;
            session.close().await;
            return Err(e);
        }
    };
    store.set_meta(STATE_KEY, state)?;
    store.commit(session.consistent_point)?;
    let consistent_point = session.consistent_point;
    session.close().await;
    tracing::info!(rows, %consistent_point, "backfill stored");
    Ok(rows)
}

/// Whether one of the `publications` the stream decodes with (the capture's, then its insert-only
/// companion) publishes `schema.table`.
pub(super) async fn check_published(
    sql: &Client,
    publications: &[String],
    schema: &str,
    table: &str,
) -> Result<()> {
    let publication = publications.first().map(String::as_str).unwrap_or_default();
    // A FOR ALL TABLES publication lists the table in both parts: ask whether any row exists.
    let published: bool = sql
        .query_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_publication_tables WHERE pubname = ANY($1) AND schemaname = $2 AND tablename = $3
               UNION ALL
               SELECT 1 FROM pg_publication p JOIN pg_class c ON c.relname = $3 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = $2
                WHERE p.pubname = ANY($1) AND p.puballtables)",
            &[&publications, &schema, &table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_tables"))?
        .get(0);
    if !published {
        return Err(Error::invalid_input(
            "--tables",
            format!(
                "{}.{} is not in publication {}: its changes would not be captured after the backfill; add it with ALTER PUBLICATION {} ADD TABLE {}.{}",
                sql::ident(schema), sql::ident(table), sql::ident(publication), sql::ident(publication), sql::ident(schema), sql::ident(table)
            ),
        ));
    }
    Ok(())
}

/// Whether `publications` publish each of `tables` (schema, table), in one query: `None` when none
/// does, else a token that changes when the table was dropped from the publication and added back
/// (the OIDs of its `pg_publication_rel` rows, which are new rows then; empty when it is published by
/// FOR ALL TABLES, by its schema or through a parent, where a return cannot be seen this way).
pub(super) async fn membership(
    sql: &Client,
    publications: &[String],
    tables: &[(&str, &str)],
) -> Result<Vec<Option<String>>> {
    let schemas: Vec<&str> = tables.iter().map(|(s, _)| *s).collect();
    let names: Vec<&str> = tables.iter().map(|(_, t)| *t).collect();
    let rows = sql
        .query(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = ANY($1) AND schemaname = b.s AND tablename = b.t)
                 OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = ANY($1) AND puballtables),
                    coalesce((SELECT string_agg(r.oid::text, ',' ORDER BY r.oid)
                                FROM pg_publication_rel r
                                JOIN pg_publication p ON p.oid = r.prpubid
                                JOIN pg_class c ON c.oid = r.prrelid
                                JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE p.pubname = ANY($1) AND n.nspname = b.s AND c.relname = b.t), '')
               FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS b(s, t, i)
              ORDER BY b.i",
            &[&publications, &schemas, &names],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_rel"))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, bool>(0).then(|| r.get::<_, String>(1)))
        .collect())
}

pub(super) async fn check_publication(sql: &Client, publication: &str) -> Result<()> {
    let exists = sql
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication"))?
        .is_some();
    if !exists {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "publication {} does not exist; create it with CREATE PUBLICATION {} FOR TABLE …",
                sql::ident(publication),
                sql::ident(publication)
            ),
        ));
    }
    Ok(())
}

impl Capture {
    /// The binding state of relation `relid`: its table's, or that of the table a recreated one
    /// replaced (its changes still in the stream).
    pub(super) fn state_of(&self, relid: u32) -> Option<&BindingState> {
        self.states
            .iter()
            .find(|s| s.oid == Some(relid))
            .or_else(|| self.states.iter().find(|s| s.retired.contains(&relid)))
    }

    /// Where relation `relid`'s changes go: its collection and how they are handled.
    pub(super) fn handling_for(&self, relid: u32, schema: &str, table: &str) -> (String, Handling) {
        match self.state_of(relid) {
            Some(state) => (state.collection.clone(), state.handling()),
            None => (default_collection_name(schema, table), Handling::Ignore),
        }
    }

    /// Resolves a Relation message's table against the bindings, by OID first: a known OID under a
    /// new name is a rename (the binding follows it, and says so); a bound name under a new OID is a
    /// table dropped and created again (its collection is read again). Without a definition every
    /// published table is bound on first sight, under a default name unique in this store.
    pub(super) async fn identify(
        &mut self,
        relid: u32,
        schema: &str,
        table: &str,
    ) -> Result<Identity> {
        if let Some(at) = self.states.iter().position(|s| s.oid == Some(relid)) {
            self.follow_rename(at, relid, schema, table)?;
            return Ok(Identity::Bound(at));
        }
        if let Some(at) = self.states.iter().position(|s| s.retired.contains(&relid)) {
            return Ok(Identity::Bound(at));
        }
        if let Some(at) = self
            .states
            .iter()
            .position(|s| s.schema == schema && s.table == table)
        {
            match self.states[at].oid {
                // A binding recorded before OIDs were: this is its table.
                None => {
                    self.states[at].oid = Some(relid);
                    self.save_states()?;
                    return Ok(Identity::Bound(at));
                }
                Some(old) => match self.name_of(old).await? {
                    // The bound table still has this name: this relation is an earlier table of
                    // the name, dropped since. A re-backfill under way replaces what it leaves;
                    // else the collection may hold its rows as current ones: read it again.
                    Some(name) if name.0 == schema && name.1 == table => {
                        if self.states[at].backfilling.is_some() {
                            self.states[at].retired.push(relid);
                            self.save_states()?;
                            return Ok(Identity::Bound(at));
                        }
                        return Ok(Identity::Rebackfill(Rebackfill {
                            schema: schema.to_string(),
                            table: table.to_string(),
                            seen: relid,
                            notice: format!(
                                "an earlier table {} (OID {relid}) was dropped and the name now belongs to \
                                 OID {old}; collection {} follows OID {old} and is read again from it (a \
                                 re-backfill), replacing the earlier table's rows",
                                qualified(schema, table),
                                self.states[at].collection
                            ),
                        }));
                    }
                    // The bound table was renamed away and this one took its name: the binding
                    // follows its table; this one is new.
                    Some((old_schema, old_table)) => {
                        self.follow_rename(at, old, &old_schema, &old_table)?;
                    }
                    None => {
                        return Ok(Identity::Rebackfill(Rebackfill {
                            schema: schema.to_string(),
                            table: table.to_string(),
                            seen: relid,
                            notice: format!(
                                "table {} was dropped and created again (OID {old} is now {relid}); collection {} \
                                 now follows the new table and is read again from it (a re-backfill), replacing \
                                 the old table's rows",
                                qualified(schema, table),
                                self.states[at].collection
                            ),
                        }))
                    }
                },
            }
        }
        if self.definition.is_some() {
            return Ok(Identity::Unbound);
        }
        let collection = self.auto_collection(relid, schema, table).await?;
        self.states.push(BindingState {
            schema: schema.to_string(),
            table: table.to_string(),
            collection,
            backfill: 0,
            backfilling: None,
            was_live: false,
            oid: Some(relid),
            retired: Vec::new(),
            left_publication: None,
            published_as: None,
        });
        self.save_states()?;
        Ok(Identity::Bound(self.states.len() - 1))
    }

    /// Records that the table of the binding state at `at` (OID `oid`) is now named `schema.table`,
    /// when that is news: in the state, in running backfills, in the definition, and in a notice.
    pub(super) fn follow_rename(
        &mut self,
        at: usize,
        oid: u32,
        schema: &str,
        table: &str,
    ) -> Result<()> {
        let state = &self.states[at];
        if state.schema == schema && state.table == table {
            return Ok(());
        }
        let (old_schema, old_table) = (state.schema.clone(), state.table.clone());
        self.notice(format!(
            "table {} was renamed to {}; collection {} keeps it",
            qualified(&old_schema, &old_table),
            qualified(schema, table),
            state.collection
        ));
        let state = &mut self.states[at];
        state.schema = schema.to_string();
        state.table = table.to_string();
        for backfill in &mut self.backfills {
            for named in &mut backfill.tables {
                if named.0 == old_schema && named.1 == old_table {
                    *named = (schema.to_string(), table.to_string());
                }
            }
        }
        self.save_states()?;
        if let Some(definition) = &mut self.definition {
            if let Some(binding) = definition
                .bindings
                .iter_mut()
                .find(|b| b.oid == Some(oid) || (b.schema == old_schema && b.table == old_table))
            {
                binding.schema = schema.to_string();
                binding.table = table.to_string();
                binding.oid = Some(oid);
            }
            self.save_definition()?;
        }
        Ok(())
    }

    /// The current name of the table with OID `oid`, if it still exists.
    pub(super) async fn name_of(&mut self, oid: u32) -> Result<Option<(String, String)>> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        Ok(sql
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
                &[&oid],
            )
            .await
            .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// The collection of a published table seen for the first time by a capture without a
    /// definition: the one a store made before bindings were recorded already holds for it, else
    /// its default name made unique among the tables discovery lists that have no collection yet (on
    /// a new store that is `discover`'s answer) and against the names this store already uses, which
    /// never change.
    pub(super) async fn auto_collection(
        &mut self,
        relid: u32,
        schema: &str,
        table: &str,
    ) -> Result<String> {
        let plain = default_collection_name(schema, table);
        if let Some(spec) = self.store.collection(&plain)? {
            if spec.schema == schema
                && spec.table == table
                && !self.states.iter().any(|s| s.collection == plain)
            {
                return Ok(plain);
            }
        }
        let mut taken: std::collections::HashSet<String> =
            self.states.iter().map(|s| s.collection.clone()).collect();
        taken.extend(self.store.collections()?.into_iter().map(|c| c.name));
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        let mut names: Vec<(String, String)> = crate::source::discovery::readable_tables(sql)
            .await?
            .into_iter()
            // Tables already bound have their names; the others may yet claim theirs.
            .filter(|(oid, _, _)| *oid != relid && !self.states.iter().any(|s| s.oid == Some(*oid)))
            .map(|(_, s, t)| (s, t))
            .collect();
        names.push((schema.to_string(), table.to_string()));
        let mut unique = crate::binding::unique_collection_names(&names, &taken)?;
        Ok(unique.pop().expect("one name per table"))
    }

    /// Logs a notice and keeps it for the report.
    pub(super) fn notice(&mut self, notice: String) {
        tracing::warn!("{notice}");
        self.report.notices.push(notice);
    }

    /// Saves the definition in force, with the identities the capture filled in, in the open batch
    /// (so it commits with what it describes), and takes its text as the one in force.
    pub(super) fn save_definition(&mut self) -> Result<()> {
        let Some(definition) = &self.definition else {
            return Ok(());
        };
        let text = serde_json::to_string(definition).map_err(Error::internal)?;
        self.store.set_meta(crate::binding::META_KEY, &text)?;
        self.definition_text = Some(text);
        Ok(())
    }

    /// Whether a key column of relation `relid` (its collection `collection`) now has a type whose
    /// values map to JSON differently from the type recorded: then its new keys (`"1"`) would not
    /// match the stored ones (`1`). Returns what changed, for the notice.
    pub(super) async fn key_type_change(
        &mut self,
        collection: &str,
        columns: &[crate::source::pgoutput::Column],
    ) -> Result<Option<String>> {
        let Some(spec) = self.store.collection(collection)? else {
            return Ok(None);
        };
        for key in &spec.key {
            let recorded = spec.columns.as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["name"].as_str() == Some(key.as_str()))
                    .and_then(|c| c["typeOid"].as_u64())
                    .and_then(|oid| u32::try_from(oid).ok())
            });
            let now = columns.iter().find(|c| &c.name == key).map(|c| c.type_oid);
            let (Some(recorded), Some(now)) = (recorded, now) else {
                continue;
            };
            if recorded != now && self.kind_of(recorded).await? != self.kind_of(now).await? {
                return Ok(Some(format!(
                    "key column {} changed type (type OID {recorded} is now {now})",
                    sql::ident(key)
                )));
            }
        }
        Ok(None)
    }

    /// The bound tables whose recorded OID is gone while a table of another OID now has their name:
    /// dropped and created again while no capture ran.
    pub(super) async fn recreated_while_stopped(&mut self) -> Result<Vec<Rebackfill>> {
        let mut found = Vec::new();
        if self.states.iter().all(|s| s.oid.is_none()) {
            return Ok(found);
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        for state in &self.states {
            let Some(old) = state.oid else { continue };
            if state.backfilling.is_some() {
                continue;
            }
            let gone = sql
                .query_opt("SELECT 1 FROM pg_class WHERE oid = $1", &[&old])
                .await
                .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
                .is_none();
            if !gone {
                continue;
            }
            if let Some(new) = table_oid(sql, &state.schema, &state.table).await? {
                found.push(Rebackfill {
                    schema: state.schema.clone(),
                    table: state.table.clone(),
                    seen: new,
                    notice: format!(
                        "table {} was dropped and created again while the capture was stopped (OID {old} is now {new}); \
                         collection {} now follows the new table and is read again from it (a re-backfill), \
                         replacing the old table's rows",
                        qualified(&state.schema, &state.table),
                        state.collection
                    ),
                });
            }
        }
        Ok(found)
    }

    /// Checks that every bound table is still in the publication, and has not been out of it since the
    /// last look; returns the re-backfills due. pgoutput stops sending a table's changes from the
    /// `ALTER PUBLICATION … DROP TABLE` on and says nothing, so without this a collection would
    /// silently fall behind its table. A table found out, or found back under a new membership (its
    /// `pg_publication_rel` row is new: it was dropped and added back in between, however quickly), is
    /// recorded as having left, committed at the checkpoint so the record outlives an error.
    ///
    /// A table out now stops a capture with a definition (the tables were bound on purpose) with a
    /// [`ErrorKind::Diverged`] error that says what happened and what will be done; without one (every
    /// published table) it is a notice. A table that left and is in again has its collection read
    /// again (a re-backfill), once no backfill of it is under way.
    pub(super) async fn check_membership(&mut self) -> Result<Vec<Rebackfill>> {
        if self.states.is_empty() {
            return Ok(Vec::new());
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        let publications =
            crate::source::publication::streamed(sql, &self.options.publication).await?;
        let tables: Vec<(&str, &str)> = self
            .states
            .iter()
            .map(|s| (s.schema.as_str(), s.table.as_str()))
            .collect();
        let found = membership(sql, &publications, &tables).await?;
        let mut changed = false;
        let mut news = Vec::new();
        let mut out = Vec::new();
        for (i, member) in found.into_iter().enumerate() {
            let state = &mut self.states[i];
            let left = match &member {
                None => true,
                Some(token) => state.published_as.as_ref().is_some_and(|old| old != token),
            };
            if left && state.left_publication.is_none() {
                state.left_publication = Some(self.checkpoint);
                news.push(i);
                changed = true;
            }
            if member.is_none() {
                out.push(i);
            }
            if member.is_some() && state.published_as != member {
                state.published_as = member;
                changed = true;
            }
        }
        if changed {
            self.save_states()?;
            self.store.commit(self.checkpoint)?;
        }
        let publication = sql::ident(&self.options.publication);
        let reported: Vec<usize> = if self.definition.is_some() {
            out.clone()
        } else {
            out.iter().copied().filter(|i| news.contains(i)).collect()
        };
        if !reported.is_empty() {
            let names: Vec<String> = reported
                .iter()
                .map(|&i| qualified(&self.states[i].schema, &self.states[i].table))
                .collect();
            let collections: Vec<&str> = reported
                .iter()
                .map(|&i| self.states[i].collection.as_str())
                .collect();
            let noticed: Vec<String> = reported
                .iter()
                .map(|&i| {
                    self.states[i]
                        .left_publication
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            let what = format!(
                "{} left publication {publication} while the capture followed it (noticed at {}): \
                 PostgreSQL sends none of its changes from then on, and no slot can send them again",
                names.join(", "),
                noticed.join(", ")
            );
            if self.definition.is_some() {
                return Err(Error::new(
                    ErrorKind::Diverged,
                    format!(
                        "{what}. Add it back ({}) or remove its binding, then start the capture again: \
                         collection {} is then read again from the table (a re-backfill), replacing its \
                         rows; the changes in between are not in its change log",
                        names
                            .iter()
                            .map(|n| format!("ALTER PUBLICATION {publication} ADD TABLE {n}"))
                            .collect::<Vec<_>>()
                            .join("; "),
                        collections.join(", ")
                    ),
                ));
            }
            self.notice(format!(
                "{what}; collection {} stops following it, and is read again from the table (a \
                 re-backfill) if it is added back",
                collections.join(", ")
            ));
        }
        let mut due = Vec::new();
        for (i, state) in self.states.iter().enumerate() {
            let Some(since) = state.left_publication else {
                continue;
            };
            if out.contains(&i) || state.backfilling.is_some() {
                continue;
            }
            let sql = self.sql.as_ref().expect("connected above");
            let Some(oid) = table_oid(sql, &state.schema, &state.table).await? else {
                continue;
            };
            due.push(Rebackfill {
                schema: state.schema.clone(),
                table: state.table.clone(),
                seen: oid,
                notice: format!(
                    "table {} is in publication {publication} again after it left (noticed at {since}); \
                     collection {} is read again from it (a re-backfill), replacing its rows; the changes \
                     made while it was out are not in its change log",
                    qualified(&state.schema, &state.table),
                    state.collection
                ),
            });
        }
        Ok(due)
    }

    /// Starts the re-backfills the stream asked for (called with no batch open): each binding
    /// follows its table's current OID (the old one retired), and its collection is read again in a
    /// new snapshot, its rows replaced when that is in. The stream then starts again at the
    /// checkpoint.
    pub(super) async fn start_rebackfills(&mut self) -> Result<()> {
        let requests = std::mem::take(&mut self.rebackfill);
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let mut tables: Vec<(Binding, bool)> = Vec::new();
        for request in requests {
            let Some(at) = self
                .states
                .iter()
                .position(|s| s.schema == request.schema && s.table == request.table)
            else {
                continue;
            };
            if tables
                .iter()
                .any(|(b, _)| b.schema == request.schema && b.table == request.table)
            {
                continue;
            }
            let sql = self.sql.as_ref().expect("connected above");
            let current = table_oid(sql, &request.schema, &request.table).await?;
            let state = &mut self.states[at];
            // Every OID but the current one is retired: its changes still in the stream go to
            // this collection ahead of the re-backfill (a table may have been dropped and created
            // again more than once since the checkpoint).
            // With no table of the name just now (dropped, the next one not created yet) every OID
            // seen is retired and the binding takes the next table of the name it meets: the one the
            // backfill reads. Keeping the dropped OID would ask for a second backfill when that table
            // shows up in the stream.
            for old in [state.oid, Some(request.seen)].into_iter().flatten() {
                if Some(old) != current && !state.retired.contains(&old) {
                    state.retired.push(old);
                }
            }
            state.oid = current;
            let (oid, collection, backfill) = (state.oid, state.collection.clone(), state.backfill);
            self.notice(request.notice);
            let binding = match self.definition.as_mut().and_then(|d| {
                d.bindings
                    .iter_mut()
                    .find(|b| b.schema == request.schema && b.table == request.table)
            }) {
                Some(binding) => {
                    binding.oid = oid;
                    binding.clone()
                }
                None => Binding {
                    schema: request.schema.clone(),
                    table: request.table.clone(),
                    collection,
                    mode: Mode::Full,
                    backfill,
                    oid,
                },
            };
            tables.push((binding, true));
        }
        self.save_definition()?;
        if !tables.is_empty() {
            self.start_backfill(tables).await?;
        } else if self.store.in_batch() {
            self.store.commit(self.checkpoint)?;
        }
        // The stream just stopped: wait until the server has let go of the slot.
        let sql = self.sql.as_ref().expect("connected above");
        slot::ensure(sql, &self.options.slot, false).await?;
        Ok(())
    }

    /// Re-derives every known relation's collection and handling after the bindings changed.
    pub(super) fn refresh_relations(&mut self) {
        let updates: Vec<(u32, String, Handling)> = self
            .relations
            .iter()
            .map(|(id, bound)| {
                let (collection, handling) =
                    self.handling_for(*id, &bound.rel.source.schema, &bound.rel.source.table);
                (*id, collection, handling)
            })
            .collect();
        for (id, collection, handling) in updates {
            if let Some(bound) = self.relations.get_mut(&id) {
                if bound.rel.collection != collection {
                    bound.recorded = false;
                }
                bound.rel.collection = collection;
                bound.handling = handling;
            }
        }
    }

    pub(super) fn save_states(&mut self) -> Result<()> {
        let text = serde_json::to_string(&self.states).map_err(Error::internal)?;
        self.store.set_meta(STATE_KEY, &text)
    }

    /// Gives every binding of `definition` and its state the table's OID, matching bindings to states
    /// by OID, else by name. A binding or state saved before OIDs were recorded gets the OID of the
    /// table its name names now; a state's name is the table's last seen name, and its binding takes
    /// it (the table was renamed). Returns whether the definition changed.
    pub(super) async fn fill_identities(&mut self, definition: &mut Definition) -> Result<bool> {
        let mut changed = false;
        let mut states_changed = false;
        for binding in &mut definition.bindings {
            let at = binding
                .oid
                .and_then(|oid| self.states.iter().position(|s| s.oid == Some(oid)))
                .or_else(|| {
                    self.states
                        .iter()
                        .position(|s| s.schema == binding.schema && s.table == binding.table)
                });
            let mut oid = at.and_then(|at| self.states[at].oid).or(binding.oid);
            if oid.is_none() {
                if self.sql.is_none() {
                    self.sql = Some(connect(&self.options.spec).await?);
                }
                let sql = self.sql.as_ref().expect("connected above");
                oid = table_oid(sql, &binding.schema, &binding.table).await?;
            }
            if let Some(at) = at {
                let state = &mut self.states[at];
                if state.oid != oid {
                    state.oid = oid;
                    states_changed = true;
                }
                if state.schema != binding.schema || state.table != binding.table {
                    binding.schema = state.schema.clone();
                    binding.table = state.table.clone();
                    changed = true;
                }
            }
            if binding.oid != oid {
                binding.oid = oid;
                changed = true;
            }
        }
        if states_changed {
            self.save_states()?;
        }
        Ok(changed)
    }

    /// Brings the capture in line with `definition` (called with no batch open): renames collections,
    /// drops unbound tables, and starts a backfill, in a snapshot of its own, for each table that is
    /// new and `Full`, whose backfill counter was raised, or whose backfill was interrupted.
    /// Everything between opening the store and the first stream: the slot's continuity, the
    /// definition reconciled with what is stored (backfills a crash interrupted start over: their
    /// snapshots died with their sessions), and tables recreated while no capture ran read again.
    pub(super) async fn start_up(
        &mut self,
        definition: Option<Definition>,
        text: Option<String>,
    ) -> Result<()> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        continuity::verify(
            sql,
            &mut self.store,
            &self.options.slot,
            self.options.create_slot,
        )
        .await?;
        self.checkpoint = self.store.checkpoint()?;
        self.reconcile(definition, text).await?;
        // Read again now even if the new table never changes.
        self.rebackfill = self.recreated_while_stopped().await?;
        // A bound table that left the publication while the capture was stopped has a gap too.
        let back = self.check_membership().await?;
        self.rebackfill.extend(back);
        if !self.rebackfill.is_empty() {
            self.start_rebackfills().await?;
        }
        Ok(())
    }

    pub(super) async fn reconcile(
        &mut self,
        definition: Option<Definition>,
        text: Option<String>,
    ) -> Result<()> {
        self.definition_text = text;
        let Some(mut definition) = definition else {
            self.definition = None;
            // Without a definition only a re-backfill can be under way: one a crash or a lost
            // connection interrupted starts over.
            let in_flight: Vec<(String, String)> = self
                .backfills
                .iter()
                .flat_map(|b| b.tables.iter().cloned())
                .collect();
            let interrupted: Vec<(Binding, bool)> = self
                .states
                .iter()
                .filter(|s| s.backfilling.is_some())
                .filter(|s| !in_flight.contains(&(s.schema.clone(), s.table.clone())))
                .map(|s| {
                    let binding = Binding {
                        schema: s.schema.clone(),
                        table: s.table.clone(),
                        collection: s.collection.clone(),
                        mode: Mode::Full,
                        backfill: s.backfill,
                        oid: s.oid,
                    };
                    (binding, s.was_live)
                })
                .collect();
            if !interrupted.is_empty() {
                self.start_backfill(interrupted).await?;
            }
            return Ok(());
        };
        let identities_filled = self.fill_identities(&mut definition).await?;
        if definition.publication != self.options.publication
            || definition.slot != self.options.slot
        {
            tracing::warn!(
                "the definition names another publication or slot; that takes effect when the capture restarts"
            );
        }
        self.store.begin()?;
        let running = |states: &[(String, String)], b: &Binding| {
            states.iter().any(|(s, t)| *s == b.schema && *t == b.table)
        };
        let in_flight: Vec<(String, String)> = self
            .backfills
            .iter()
            .flat_map(|b| b.tables.iter().cloned())
            .collect();
        let mut to_backfill = Vec::new();
        for binding in &definition.bindings {
            if running(&in_flight, binding) {
                // Looked at again when that backfill is in.
                continue;
            }
            match self
                .states
                .iter_mut()
                .find(|s| s.schema == binding.schema && s.table == binding.table)
            {
                None => {
                    if binding.mode == Mode::Full {
                        to_backfill.push((binding.clone(), false));
                    } else {
                        self.states.push(live_state(binding));
                    }
                }
                Some(state) => {
                    if state.collection != binding.collection {
                        self.store
                            .rename_collection(&state.collection, &binding.collection)?;
                        tracing::info!(from = %state.collection, to = %binding.collection, "collection renamed");
                        state.collection = binding.collection.clone();
                    }
                    if state.backfilling.is_some() {
                        to_backfill.push((binding.clone(), state.was_live));
                    } else if binding.backfill > state.backfill {
                        to_backfill.push((binding.clone(), true));
                    }
                }
            }
        }
        let before = self.states.len();
        self.states
            .retain(|s| definition.binding(&s.schema, &s.table).is_some());
        if self.states.len() != before {
            tracing::info!(
                removed = before - self.states.len(),
                "tables no longer bound; their collections stay in the store"
            );
        }
        self.definition = Some(definition);
        if identities_filled {
            self.save_definition()?;
        }
        self.save_states()?;
        self.store.commit(self.checkpoint)?;
        if !to_backfill.is_empty() {
            self.start_backfill(to_backfill).await?;
        }
        self.refresh_relations();
        Ok(())
    }

    /// Takes a snapshot in a temporary slot created now and reads `tables` in it into a staging store,
    /// on a task of its own, while the stream goes on. Every transaction the stream has stored so far
    /// committed before the slot's consistent point, so from here on the stream holds these tables'
    /// changes committed at or after it, and finishing ([`Capture::finish_backfill`]) applies them
    /// after the snapshot's rows.
    pub(super) async fn start_backfill(&mut self, tables: Vec<(Binding, bool)>) -> Result<()> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        // Before the first stream, the one about to start decodes what exists now.
        let publications = if self.streamed.is_empty() {
            crate::source::publication::streamed(sql, &self.options.publication).await?
        } else {
            self.streamed.clone()
        };
        // A table read again (it was live) may leave the publication at any moment, here too: the
        // membership check ([`Capture::check_membership`]) follows those, so only a new one is refused.
        for (binding, was_live) in &tables {
            if !was_live {
                check_published(sql, &publications, &binding.schema, &binding.table).await?;
            }
        }
        // Membership read before the snapshot: a table that leaves the publication (or leaves and
        // comes back) after this shows as a change at the next check, so no gap after the snapshot's
        // point goes unseen; one out already has left.
        let named: Vec<(&str, &str)> = tables
            .iter()
            .map(|(b, _)| (b.schema.as_str(), b.table.as_str()))
            .collect();
        let members = membership(sql, &publications, &named).await?;
        let name = format!("tidepool_backfill_{}", crate::secrets::random_hex(6)?);
        let session =
            crate::source::replication::SnapshotSession::create(&self.options.spec, &name, true)
                .await?;
        let point = session.consistent_point;
        self.store.begin()?;
        for ((binding, was_live), member) in tables.iter().zip(members) {
            self.supersede(&binding.schema, &binding.table);
            self.store.drop_held(&binding.collection)?;
            let retired = self
                .states
                .iter()
                .find(|s| s.schema == binding.schema && s.table == binding.table)
                .map(|s| s.retired.clone())
                .unwrap_or_default();
            self.states
                .retain(|s| !(s.schema == binding.schema && s.table == binding.table));
            self.states.push(BindingState {
                backfilling: Some(point),
                was_live: *was_live,
                retired,
                left_publication: member.is_none().then_some(self.checkpoint),
                published_as: member,
                ..live_state(binding)
            });
        }
        self.save_states()?;
        self.store.commit(self.checkpoint)?;
        self.refresh_relations();
        let staging = self.options.store_dir.join(STAGING).join(&name);
        let _ = std::fs::remove_dir_all(&staging);
        tracing::info!(tables = tables.len(), %point, "backfilling alongside the stream");
        let spec = self.options.spec.clone();
        let progress = self.options.backfill_progress.clone();
        let done = self.backfill_done.0.clone();
        let bindings = tables.clone();
        let dir = staging.clone();
        // The staging store is part of this store: encrypted with its key if it is.
        let key = self.store.key();
        let task = self.side.spawn(async move {
            let result = async {
                let mut store = Store::open_keyed(&dir, key)?;
                let mut report = |p: &crate::capture::backfill::BackfillProgress| {
                    if let Some(callback) = &progress {
                        callback(p);
                    }
                };
                let rows = crate::capture::backfill::run(
                    &spec,
                    &mut store,
                    &bindings,
                    &session.snapshot,
                    point,
                    &mut report,
                )
                .await?;
                store.commit(point)?;
                Ok(rows)
            }
            .await;
            session.close().await;
            let _ = done.send((dir, result));
        });
        self.backfills.push(RunningBackfill {
            tables: tables
                .iter()
                .map(|(b, _)| (b.schema.clone(), b.table.clone()))
                .collect(),
            staging,
            point,
            task,
        });
        Ok(())
    }

    /// Takes `schema.table` out of the backfills still running for it, as a new one starts (the
    /// table was dropped and created again while the older one ran). The older one must never be
    /// brought in: that would end the hold the newer one set, the changes after it would be stored
    /// as they come, and the newer one's rows, read from an older snapshot than those changes, would
    /// then replace them. A backfill left with no table runs out and is discarded when it ends.
    fn supersede(&mut self, schema: &str, table: &str) {
        for backfill in &mut self.backfills {
            backfill
                .tables
                .retain(|(s, t)| !(s == schema && t == table));
        }
    }

    /// Brings a finished backfill in (called with no batch open): its rows, then the changes held
    /// since its snapshot, in one store transaction; the tables are live from then on.
    pub(super) async fn finish_backfill(
        &mut self,
        staging: PathBuf,
        result: Result<u64>,
    ) -> Result<()> {
        let Some(at) = self.backfills.iter().position(|b| b.staging == staging) else {
            return Ok(());
        };
        let backfill = self.backfills.remove(at);
        if backfill.tables.is_empty() {
            // Superseded by newer backfills of its tables: nothing of it is brought in.
            let _ = std::fs::remove_dir_all(&staging);
            tracing::debug!(staging = %staging.display(), "a superseded backfill ended; discarded");
            return Ok(());
        }
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if e.kind() == ErrorKind::Connection => {
                tracing::warn!(error = %e, "a backfill lost its connection; starting it over");
                let _ = std::fs::remove_dir_all(&staging);
                return self.reconcile_again().await;
            }
            Err(e) => return Err(e),
        };
        let mut collections = Vec::new();
        for (schema, table) in &backfill.tables {
            if let Some(state) = self
                .states
                .iter_mut()
                .find(|s| &s.schema == schema && &s.table == table)
            {
                collections.push((state.collection.clone(), state.was_live));
                state.backfilling = None;
                state.was_live = false;
            }
        }
        let text = serde_json::to_string(&self.states).map_err(Error::internal)?;
        self.store
            .import_backfill(&staging, &collections, &[(STATE_KEY, &text)])?;
        let _ = std::fs::remove_dir_all(&staging);
        self.report.backfilled_rows += rows;
        tracing::info!(rows, tables = collections.len(), "backfill brought in");
        self.refresh_relations();
        // The definition may have moved on while it ran.
        self.reconcile_again().await
    }

    /// Reconciles with the definition in force again (a backfill ended: start what waited for it).
    pub(super) async fn reconcile_again(&mut self) -> Result<()> {
        let definition = self.definition.clone();
        let text = self.definition_text.clone();
        self.reconcile(definition, text).await
    }

    pub(super) async fn reload_definition(&mut self) -> Result<()> {
        let text = Definition::saved_text(&self.store)?;
        if text == self.definition_text {
            return Ok(());
        }
        let definition = text.as_deref().map(Definition::parse).transpose()?;
        tracing::info!("the capture definition changed; applying it");
        self.reconcile(definition, text).await
    }
}
