//! Scratch databases on the shadow server: `pgrehearse_<target>_<run>`,
//! created for restore drills and rehearsals and dropped afterwards, plus one
//! template per target (`pgrehearse_<target>_template`) holding a restored
//! copy of the latest verified snapshot, cloned with `CREATE DATABASE …
//! TEMPLATE … STRATEGY FILE_COPY` instead of restoring again.
//!
//! Safety rules: the shadow must not be the live server unless the target
//! says `shadow_on_live_server = true` (compared by `system_identifier`, not
//! host names), the live database itself is never touched, and only
//! databases recorded in the state store as ours are ever dropped.
//!
//! Live's roles are mirrored when the shadow is opened ([`roles`]): the
//! scratch databases and the template then get live's database owner and
//! privileges, and restores keep live's owners and grants. A template made
//! for other owners (another shadow role, or before roles were mirrored) is
//! not cloned but rebuilt by the next drill.

pub mod load;
pub mod roles;

use sqlx::Executor;
use sqlx::postgres::PgConnection;

use crate::config::Target;
use crate::error_class::{Class, Classify};
use crate::pg::{self, ConnUrl, PgError, quote_ident};
use crate::state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error(
        "target `{target}` has no shadow_url; restore drills and rehearsals need a server where pgrehearse may create and drop scratch databases: add shadow_url (its maintenance database, e.g. postgres://pgrehearse@db2/postgres) to the target"
    )]
    NoShadow { target: String },
    #[error(
        "shadow_url of target `{target}` reaches the live server (system identifier {sysid}): restores there would load production. Point shadow_url at another server, or set shadow_on_live_server = true"
    )]
    ShadowIsLive { target: String, sysid: String },
    #[error(
        "shadow_url of target `{target}` names the live database itself; it must name a maintenance database such as `postgres`"
    )]
    LiveDatabase { target: String },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for ShadowError {
    fn class(&self) -> Class {
        match self {
            ShadowError::NoShadow { .. } | ShadowError::ShadowIsLive { .. } | ShadowError::LiveDatabase { .. } => {
                Class::Configuration
            }
            ShadowError::Pg(e) => e.class(),
            ShadowError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ShadowError::NoShadow { .. } => "no_shadow",
            ShadowError::ShadowIsLive { .. } => "shadow_is_live",
            ShadowError::LiveDatabase { .. } => "shadow_is_live_database",
            ShadowError::Pg(e) => e.kind(),
            ShadowError::State(e) => e.kind(),
        }
    }
}

/// A session on the target's shadow server (maintenance database).
pub struct Shadow {
    target: String,
    url: ConnUrl,
    conn: PgConnection,
    state: State,
    mirror: roles::Mirror,
}

/// What [`Shadow::template_snapshot`] and the cleanups need of a database.
struct DbFacts {
    owner: String,
    is_template: bool,
    /// The shadow role has the owner's rights.
    ours: bool,
}

pub const KIND_SCRATCH: &str = "scratch";
pub const KIND_TEMPLATE: &str = "template";

impl Shadow {
    /// Connects and proves the shadow is not live, before anything is
    /// written; then drops scratch databases left by dead runs.
    pub async fn open(target: &Target, state: &State) -> Result<Shadow, ShadowError> {
        let url = target.shadow_url.clone().ok_or_else(|| ShadowError::NoShadow { target: target.name.clone() })?;
        let mut live = pg::connect(&target.live_url, "pgrehearse-identity").await?;
        let live_info = pg::server_info(&mut live, &target.live_url).await?;
        let (mirror, live_roles) =
            roles::read_live(&mut live, &target.live_url, target.migration_role.as_deref()).await?;
        drop(live);
        let mut conn = pg::connect(&url, "pgrehearse-shadow").await?;
        let info = pg::server_info(&mut conn, &url).await?;
        if info.system_identifier == live_info.system_identifier {
            if info.database == live_info.database {
                return Err(ShadowError::LiveDatabase { target: target.name.clone() });
            }
            if !target.shadow_on_live_server {
                return Err(ShadowError::ShadowIsLive { target: target.name.clone(), sysid: info.system_identifier });
            }
        }
        // Roles are server-wide: on live's own server nothing is written.
        let may_write = info.system_identifier != live_info.system_identifier;
        let mut mirror = roles::apply(&mut conn, &url, mirror, &live_roles, may_write).await?;
        if target.restore_no_owner == Some(true) && mirror.complete {
            mirror.complete = false;
            mirror.warnings.push(format!(
                "restore_no_owner = true: the copy is owned by the shadow role and migrations ran as `{}`, not as live's `{}`",
                mirror.shadow_role, mirror.live_role
            ));
        }
        for w in &mirror.warnings {
            tracing::warn!(target = %target.name, "Shadow: {w}.");
        }
        let mut shadow = Shadow { target: target.name.clone(), url, conn, state: state.clone(), mirror };
        shadow.drop_leftovers().await?;
        Ok(shadow)
    }

    /// How live's roles are mirrored: the role the copy runs as, the
    /// owner its databases get, what could not be mirrored.
    pub fn mirror(&self) -> &roles::Mirror {
        &self.mirror
    }

    /// Whether restores keep live's owners and grants (every role they
    /// name exists on the shadow and the shadow role may act as it).
    pub fn restores_owners(&self) -> bool {
        self.mirror.complete
    }

    /// `OWNER …` for a new database, and live's database privileges on it.
    async fn own(&mut self, name: &str) -> Result<(), ShadowError> {
        if !self.mirror.complete {
            return Ok(());
        }
        for sql in roles::acl_sql(name, &self.mirror.db_acl) {
            self.exec(&sql).await?;
        }
        Ok(())
    }

    fn owner_clause(&self) -> String {
        format!(" OWNER {}", quote_ident(self.mirror.owner()))
    }

    /// A scratch database name for a run: `pgrehearse_<target>_<run>`.
    pub fn scratch_name(&self, run: &str) -> String {
        let mut name =
            format!("pgrehearse_{}_{}", self.target.replace('-', "_"), run.to_ascii_lowercase().replace('-', "_"));
        name.truncate(63);
        name
    }

    pub fn template_name(&self) -> String {
        format!("pgrehearse_{}_template", self.target.replace('-', "_"))
    }

    /// Connection URL of a database on the shadow server.
    pub fn url_for(&self, db: &str) -> ConnUrl {
        self.url.with_database(db)
    }

    async fn exists(&mut self, name: &str) -> Result<bool, ShadowError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query { url: self.url.redacted(), source })?;
        Ok(n > 0)
    }

    async fn exec(&mut self, sql: &str) -> Result<(), ShadowError> {
        self.conn.execute(sql).await.map_err(|source| PgError::Query { url: self.url.redacted(), source })?;
        Ok(())
    }

    /// Creates an empty scratch database (recorded first, so a crash never
    /// leaves one we do not know is ours).
    pub async fn create(&mut self, name: &str, snapshot_id: &str) -> Result<(), ShadowError> {
        self.state.shadow_db_planned(&self.target, name, KIND_SCRATCH, Some(snapshot_id)).await?;
        self.exec(&format!("CREATE DATABASE {}{}", quote_ident(name), self.owner_clause())).await?;
        self.own(name).await
    }

    /// Creates a scratch database as a file copy of the template.
    pub async fn clone_template(&mut self, name: &str, snapshot_id: &str) -> Result<(), ShadowError> {
        self.state.shadow_db_planned(&self.target, name, KIND_SCRATCH, Some(snapshot_id)).await?;
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY{}",
            quote_ident(name),
            quote_ident(&self.template_name()),
            self.owner_clause()
        );
        self.exec(&sql).await?;
        self.own(name).await
    }

    /// Creates a scratch database as a file copy of another scratch
    /// database (which must have no sessions).
    pub async fn clone_db(&mut self, name: &str, from: &str, snapshot_id: &str) -> Result<(), ShadowError> {
        self.state.shadow_db_planned(&self.target, name, KIND_SCRATCH, Some(snapshot_id)).await?;
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY{}",
            quote_ident(name),
            quote_ident(from),
            self.owner_clause()
        );
        self.exec(&sql).await?;
        self.own(name).await
    }

    /// Drops a database we created (terminating its sessions).
    pub async fn drop_db(&mut self, name: &str) -> Result<(), ShadowError> {
        self.exec(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await?;
        self.state.shadow_db_dropped(&self.target, name).await?;
        Ok(())
    }

    /// Hands a scratch database over to the operator (`--keep`): it is
    /// forgotten, so no later cleanup ever drops it.
    pub async fn release(&mut self, name: &str) -> Result<(), ShadowError> {
        self.state.shadow_db_dropped(&self.target, name).await?;
        Ok(())
    }

    /// The snapshot the current template holds, if a template exists that
    /// this shadow role can clone and that was made for the owners the copy
    /// gets now (see [`Shadow::mirror`]); `None` otherwise: restore instead.
    pub async fn template_snapshot(&mut self) -> Result<Option<String>, ShadowError> {
        let tpl = self.template_name();
        let rec =
            self.state.shadow_dbs(&self.target).await?.into_iter().find(|d| d.kind == KIND_TEMPLATE && d.name == tpl);
        let Some(rec) = rec else { return Ok(None) };
        let Some(t) = self.database(&tpl).await? else { return Ok(None) };
        if t.owner != self.mirror.owner() {
            tracing::info!(template = %tpl, owner = %t.owner, wanted = %self.mirror.owner(), "The template was made for other owners; restoring instead (the next drill rebuilds it).");
            return Ok(None);
        }
        if !t.is_template && !t.ours {
            tracing::info!(template = %tpl, owner = %t.owner, "The shadow role cannot clone the template; restoring instead.");
            return Ok(None);
        }
        Ok(rec.snapshot_id)
    }

    /// Owner, template flag and whether this shadow role has its owner's
    /// rights (may drop, rename and clone it) of database `name`.
    async fn database(&mut self, name: &str) -> Result<Option<DbFacts>, ShadowError> {
        let row: Option<(String, bool, bool)> = sqlx::query_as(
            "SELECT pg_get_userbyid(datdba)::text, datistemplate, pg_has_role(current_user, datdba, 'USAGE') \
             FROM pg_database WHERE datname = $1",
        )
        .bind(name)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|source| PgError::Query { url: self.url.redacted(), source })?;
        Ok(row.map(|(owner, is_template, ours)| DbFacts { owner, is_template, ours }))
    }

    /// Makes a verified scratch database the target's template: a file copy
    /// of it (the scratch database itself is dropped or kept by the caller),
    /// replacing the previous template. Marked as a template that refuses
    /// connections, so that nothing can change it between clones. A previous
    /// template this shadow role may not drop (made by another role) is
    /// kept, with a warning naming what to drop; nothing is left behind on
    /// a failure.
    pub async fn promote_to_template(&mut self, scratch: &str, snapshot_id: &str) -> Result<(), ShadowError> {
        let tpl = self.template_name();
        if let Some(old) = self.database(&tpl).await?
            && !old.ours
        {
            tracing::warn!(
                template = %tpl,
                owner = %old.owner,
                shadow_role = %self.mirror.shadow_role,
                "The template belongs to role `{}`, which the shadow role `{}` may not act as, so it is not replaced and rehearsals restore instead of cloning it: as `{}` or a superuser, run `ALTER DATABASE {} IS_TEMPLATE false; DROP DATABASE {};` (or GRANT {} TO {}) and the next drill rebuilds it.",
                old.owner, self.mirror.shadow_role, old.owner, quote_ident(&tpl), quote_ident(&tpl),
                quote_ident(&old.owner), quote_ident(&self.mirror.shadow_role)
            );
            return Ok(());
        }
        let staging = format!("{tpl}_new");
        if self.exists(&staging).await? {
            self.drop_db(&staging).await?;
        }
        self.state.shadow_db_planned(&self.target, &staging, KIND_SCRATCH, Some(snapshot_id)).await?;
        let made = self.replace_template(scratch, &staging, &tpl).await;
        if let Err(e) = made {
            if let Err(d) = self.drop_db(&staging).await {
                tracing::warn!(database = %staging, error = %d, "Cannot drop the new template after a failure; the next drill drops it.");
            }
            return Err(e);
        }
        self.state.shadow_db_dropped(&self.target, &staging).await?;
        self.state.shadow_db_planned(&self.target, &tpl, KIND_TEMPLATE, Some(snapshot_id)).await?;
        Ok(())
    }

    async fn replace_template(&mut self, scratch: &str, staging: &str, tpl: &str) -> Result<(), ShadowError> {
        self.exec(&format!(
            "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY{}",
            quote_ident(staging),
            quote_ident(scratch),
            self.owner_clause()
        ))
        .await?;
        if self.exists(tpl).await? {
            self.exec(&format!("ALTER DATABASE {} IS_TEMPLATE false", quote_ident(tpl))).await?;
            self.drop_db(tpl).await?;
        }
        self.exec(&format!("ALTER DATABASE {} RENAME TO {}", quote_ident(staging), quote_ident(tpl))).await?;
        self.exec(&format!("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false", quote_ident(tpl))).await
    }

    /// Drops scratch databases whose run died (this host's dead pids).
    async fn drop_leftovers(&mut self) -> Result<(), ShadowError> {
        let me = crate::host::hostname();
        for db in self.state.shadow_dbs(&self.target).await? {
            let dead = db.host == me && db.pid != std::process::id() && !crate::host::process_alive(db.pid);
            if db.kind == KIND_SCRATCH && dead {
                tracing::warn!(database = %db.name, "Dropping a scratch database left by a run that died.");
                // One the shadow role may not drop (another role made it)
                // must not stop this run: say exactly what to drop.
                if let Err(e) = self.drop_db(&db.name).await {
                    let owner = self.database(&db.name).await?.map(|d| d.owner).unwrap_or_default();
                    tracing::warn!(
                        database = %db.name,
                        owner = %owner,
                        error = %e,
                        "Cannot drop a scratch database left by a run that died: as `{owner}` or a superuser, run `DROP DATABASE {} WITH (FORCE);`.",
                        quote_ident(&db.name)
                    );
                }
            }
        }
        Ok(())
    }
}
