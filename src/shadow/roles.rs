//! Live's roles mirrored on the shadow server, so that a rehearsal runs its
//! migrations as the role live runs them as, with that role's privileges:
//! the copy keeps live's owners and grants (`pg_restore` without
//! `--no-owner`/`--no-acl`), the scratch database keeps live's owner and
//! database privileges (e.g. no `CREATE` on the database: no `CREATE
//! EXTENSION`), and the executor's session runs `SET ROLE` to live's role.
//!
//! What is read on live (catalog reads only): `current_user` (after `SET
//! ROLE migration_role` when configured), the database's owner and ACL, the
//! roles its objects depend on (`pg_shdepend`: owners, grantees, policies),
//! the bootstrap superuser (its objects are not in `pg_shdepend`), and the
//! roles live's role is a member of, with their attributes.
//!
//! What is written on the shadow: each missing role, created `NOLOGIN`
//! without a password (nobody logs in as it: the session is the shadow
//! role's, which `SET ROLE`s), with the privilege attributes of live's role
//! and the roles it belongs to; the memberships among them that live has;
//! and, when the shadow role is no superuser, its own membership in each
//! mirrored role (needed to restore ownership, to `SET ROLE` and to drop the
//! scratch databases live's owner owns). Existing roles are never altered;
//! where they differ from live, or a role cannot be created, a warning says
//! what was not mirrored, and the copy is then restored as before (owned by
//! the shadow role) and migrations run as the shadow role.
//!
//! Hand-written: no crate mirrors PostgreSQL roles; `pg_dumpall
//! --globals-only` would copy every role of the live server (and tablespaces),
//! not the few a database needs, and fails as a whole on the first role the
//! shadow role may not create.

use sqlx::postgres::PgConnection;
use sqlx::{Executor, Row};

use crate::conn_url::ConnUrl;
use crate::pg::{PgError, quote_ident};

/// A role of live that the copy needs.
#[derive(Debug, Clone)]
pub struct LiveRole {
    name: String,
    superuser: bool,
    inherit: bool,
    createrole: bool,
    createdb: bool,
    bypassrls: bool,
    /// Live's role or one it is a member of: its attributes and memberships
    /// decide the migrations' privileges.
    privileged: bool,
    member_of: Vec<String>,
}

impl LiveRole {
    /// `CREATE ROLE` options; those the shadow role may not grant are
    /// left out and named in the second list.
    fn options(&self, shadow_super: bool) -> (String, Vec<&'static str>) {
        let mut opts = vec!["NOLOGIN", if self.inherit { "INHERIT" } else { "NOINHERIT" }];
        let mut dropped = Vec::new();
        if self.privileged {
            for (on, name, needs_super) in [
                (self.superuser, "SUPERUSER", true),
                (self.bypassrls, "BYPASSRLS", true),
                (self.createdb, "CREATEDB", false),
                (self.createrole, "CREATEROLE", false),
            ] {
                match (on, needs_super && !shadow_super) {
                    (false, _) => {}
                    (true, true) => dropped.push(name),
                    (true, false) => opts.push(name),
                }
            }
        }
        (opts.join(" "), dropped)
    }

    fn attributes(&self) -> [(bool, &'static str); 5] {
        [
            (self.superuser, "SUPERUSER"),
            (self.bypassrls, "BYPASSRLS"),
            (self.createdb, "CREATEDB"),
            (self.createrole, "CREATEROLE"),
            (self.inherit, "INHERIT"),
        ]
    }
}

/// How the copy mirrors live's roles (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// The role live's migrations run as.
    pub live_role: String,
    /// Live's database owner.
    pub db_owner: String,
    /// Live's database ACL as (grantee, privilege); `None` grantee is
    /// PUBLIC. `None` when live has the default ACL.
    pub db_acl: Option<Vec<(Option<String>, String)>>,
    /// Every role the copy needs exists on the shadow and the shadow role
    /// may act as each: owners and grants are restored, the copy runs as
    /// `live_role`.
    pub complete: bool,
    /// The role the shadow connects as.
    pub shadow_role: String,
    /// What could not be mirrored, one sentence each.
    pub warnings: Vec<String>,
}

impl Mirror {
    /// The role migrations run as on the copy: live's when mirrored.
    pub fn run_as(&self) -> &str {
        if self.complete { &self.live_role } else { &self.shadow_role }
    }

    /// The owner the copy's databases get.
    pub fn owner(&self) -> &str {
        if self.complete { &self.db_owner } else { &self.shadow_role }
    }
}

const ROLES_SQL: &str = "WITH RECURSIVE up(oid) AS ( \
       SELECT oid FROM pg_roles WHERE rolname = current_user \
       UNION SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid), \
     db AS (SELECT oid, datdba, datacl FROM pg_database WHERE datname = current_database()), \
     needed(oid) AS ( \
       SELECT oid FROM up UNION SELECT datdba FROM db \
       UNION SELECT s.refobjid FROM pg_shdepend s, db \
             WHERE s.refclassid = 'pg_authid'::regclass AND s.dbid = db.oid \
       UNION SELECT (aclexplode(datacl)).grantee FROM db \
       UNION SELECT 10::oid WHERE EXISTS ( \
         SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relowner = 10 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
         UNION ALL SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE p.proowner = 10 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e') \
         UNION ALL SELECT 1 FROM pg_namespace n WHERE n.nspowner = 10 \
            AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname NOT LIKE 'pg\\_%')) \
     SELECT r.rolname::text AS name, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, \
       r.oid IN (SELECT oid FROM up) AS privileged, \
       ARRAY(SELECT p.rolname::text FROM pg_auth_members m JOIN pg_roles p ON p.oid = m.roleid \
             WHERE m.member = r.oid ORDER BY 1) AS member_of \
     FROM pg_roles r JOIN needed n ON n.oid = r.oid ORDER BY r.oid";

/// Reads what the copy needs of live's roles, on a session to live's
/// database as live's migration role (`migration_role`, when set, is taken
/// with `SET ROLE` first, as the release's session does).
pub async fn read_live(
    conn: &mut PgConnection,
    url: &ConnUrl,
    migration_role: Option<&str>,
) -> Result<(Mirror, Vec<LiveRole>), PgError> {
    let q = |source| PgError::Query { url: url.redacted(), source };
    if let Some(role) = migration_role {
        conn.execute(format!("SET ROLE {}", quote_ident(role)).as_str()).await.map_err(q)?;
    }
    let row = sqlx::query(
        "SELECT current_user::text AS me, pg_get_userbyid(datdba)::text AS owner, datacl IS NULL AS default_acl \
         FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(q)?;
    let acl: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, a.privilege_type \
         FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(q)?;
    let roles = sqlx::query(ROLES_SQL).fetch_all(&mut *conn).await.map_err(q)?;
    let roles = roles
        .into_iter()
        .map(|r| LiveRole {
            name: r.get("name"),
            superuser: r.get("rolsuper"),
            inherit: r.get("rolinherit"),
            createrole: r.get("rolcreaterole"),
            createdb: r.get("rolcreatedb"),
            bypassrls: r.get("rolbypassrls"),
            privileged: r.get("privileged"),
            member_of: r.get("member_of"),
        })
        .collect();
    if migration_role.is_some() {
        conn.execute("RESET ROLE").await.map_err(q)?;
    }
    let mirror = Mirror {
        live_role: row.get("me"),
        db_owner: row.get("owner"),
        db_acl: (!row.get::<bool, _>("default_acl")).then_some(acl),
        ..Mirror::default()
    };
    Ok((mirror, roles))
}

/// One role as the shadow has it.
struct ShadowRole {
    attributes: [bool; 5],
    /// The shadow role has this role's privileges (or is a superuser).
    usable: bool,
    member_of: Vec<String>,
}

async fn role_on_shadow(conn: &mut PgConnection, name: &str) -> Result<Option<ShadowRole>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT r.rolsuper, r.rolbypassrls, r.rolcreatedb, r.rolcreaterole, r.rolinherit, \
           pg_has_role(current_user, r.oid, 'USAGE') AS usable, \
           ARRAY(SELECT p.rolname::text FROM pg_auth_members m JOIN pg_roles p ON p.oid = m.roleid \
                 WHERE m.member = r.oid ORDER BY 1) AS member_of \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| ShadowRole {
        attributes: [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)],
        usable: r.get("usable"),
        member_of: r.get("member_of"),
    }))
}

/// Mirrors `roles` on the shadow (`conn`: a session of the shadow role);
/// fills `complete`, `shadow_role` and `warnings` of `mirror`. With
/// `may_write = false` (the shadow is live's own server, where the roles
/// are live's) it only checks that the shadow role may act as each.
pub async fn apply(
    conn: &mut PgConnection,
    url: &ConnUrl,
    mut mirror: Mirror,
    roles: &[LiveRole],
    may_write: bool,
) -> Result<Mirror, PgError> {
    let q = |source| PgError::Query { url: url.redacted(), source };
    let me =
        sqlx::query("SELECT current_user::text, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await
            .map_err(q)?;
    let (shadow_role, is_super, createrole): (String, bool, bool) = (me.get(0), me.get(1), me.get(2));
    let may_create = (is_super || createrole) && may_write;
    mirror.shadow_role = shadow_role.clone();
    let mut warnings = Vec::new();
    let mut complete = true;
    for role in roles {
        let have = role_on_shadow(conn, &role.name).await.map_err(q)?;
        if let Some(have) = have {
            let differs: Vec<String> = role
                .attributes()
                .iter()
                .zip(have.attributes)
                .filter(|((live, _), shadow)| role.privileged && live != shadow)
                .map(|((live, name), _)| format!("{} {name}", if *live { "lacks" } else { "has" }))
                .collect();
            if !differs.is_empty() {
                warnings.push(format!(
                    "role `{}` exists on the shadow with other privileges than on live (it {} there); the rehearsal ran with the shadow's",
                    role.name,
                    differs.join(", ")
                ));
            }
            continue;
        }
        if !may_create {
            warnings.push(format!(
                "role `{}` does not exist on the shadow and the shadow role `{shadow_role}` may not create it (it needs CREATEROLE)",
                role.name
            ));
            complete = false;
            continue;
        }
        let (opts, dropped) = role.options(is_super);
        let sql = format!("CREATE ROLE {} {opts}", quote_ident(&role.name));
        match conn.execute(sql.as_str()).await {
            Ok(_) => {
                tracing::info!(role = %role.name, "Mirrored a role of live on the shadow.");
                if !dropped.is_empty() {
                    warnings.push(format!(
                        "role `{}` was mirrored without {} (only a superuser shadow role may grant it)",
                        role.name,
                        dropped.join(", ")
                    ));
                }
            }
            Err(e) => {
                warnings.push(format!("role `{}` could not be created on the shadow: {}", role.name, db_message(&e)));
                complete = false;
            }
        }
    }
    // Memberships of live's role (and the roles it belongs to), as on live.
    for role in roles.iter().filter(|r| r.privileged) {
        let Some(have) = role_on_shadow(conn, &role.name).await.map_err(q)? else { continue };
        for parent in role.member_of.iter().filter(|p| !have.member_of.contains(p)) {
            if !may_write {
                continue;
            }
            let sql = format!("GRANT {} TO {}", quote_ident(parent), quote_ident(&role.name));
            if let Err(e) = conn.execute(sql.as_str()).await {
                warnings.push(format!(
                    "role `{}` is a member of `{parent}` on live but could not be made one on the shadow: {}",
                    role.name,
                    db_message(&e)
                ));
            }
        }
        let extra: Vec<&String> = have.member_of.iter().filter(|p| !role.member_of.contains(p)).collect();
        if !extra.is_empty() {
            let extra: Vec<String> = extra.iter().map(|p| format!("`{p}`")).collect();
            warnings.push(format!(
                "role `{}` is a member of {} on the shadow but not on live; the rehearsal ran with those privileges",
                role.name,
                extra.join(", ")
            ));
        }
    }
    // The shadow role acts as each mirrored role: restores their objects,
    // SET ROLEs to live's role, owns (drops) the scratch databases.
    for role in roles {
        // Predefined roles (`pg_…`) exist everywhere and are nobody's to grant.
        if role.name == shadow_role || role.name.starts_with("pg_") {
            continue;
        }
        let Some(have) = role_on_shadow(conn, &role.name).await.map_err(q)? else { continue };
        if have.usable {
            continue;
        }
        if !may_write {
            warnings.push(format!("the shadow role `{shadow_role}` cannot act as role `{}`", role.name));
            complete = false;
            continue;
        }
        let sql = format!("GRANT {} TO {}", quote_ident(&role.name), quote_ident(&shadow_role));
        if let Err(e) = conn.execute(sql.as_str()).await {
            warnings.push(format!(
                "the shadow role `{shadow_role}` cannot act as role `{}` (GRANT {} TO {shadow_role} failed: {})",
                role.name,
                role.name,
                db_message(&e)
            ));
            complete = false;
        }
    }
    if !complete {
        warnings.push(format!(
            "live's roles are not mirrored on the shadow: the copy is owned by the shadow role and migrations ran as `{shadow_role}`, not as live's `{}`; privileges live lacks are not found by this rehearsal",
            mirror.live_role
        ));
    }
    mirror.complete = complete;
    mirror.warnings = warnings;
    Ok(mirror)
}

/// The server's message of a failed statement (without the driver's prefix).
fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// `GRANT`s that give database `db` live's database ACL (after `REVOKE ALL
/// … FROM PUBLIC`); empty when live has the default ACL.
pub fn acl_sql(db: &str, acl: &Option<Vec<(Option<String>, String)>>) -> Vec<String> {
    let Some(items) = acl else { return Vec::new() };
    let db = quote_ident(db);
    let mut sql = vec![format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC")];
    for (grantee, privilege) in items {
        let to = grantee.as_deref().map_or("PUBLIC".to_string(), quote_ident);
        sql.push(format!("GRANT {privilege} ON DATABASE {db} TO {to}"));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(superuser: bool, createdb: bool, privileged: bool) -> LiveRole {
        LiveRole {
            name: "app".into(),
            superuser,
            inherit: true,
            createrole: false,
            createdb,
            bypassrls: false,
            privileged,
            member_of: Vec::new(),
        }
    }

    #[test]
    fn mirrored_roles_never_log_in_and_keep_what_the_shadow_may_grant() {
        assert_eq!(role(false, true, true).options(false), ("NOLOGIN INHERIT CREATEDB".to_string(), vec![]));
        assert_eq!(role(true, false, true).options(false), ("NOLOGIN INHERIT".to_string(), vec!["SUPERUSER"]));
        assert_eq!(role(true, false, true).options(true).0, "NOLOGIN INHERIT SUPERUSER");
        // An owner that is not live's role gets no attributes: they do not
        // change what the migrations may do.
        assert_eq!(role(true, true, false).options(true).0, "NOLOGIN INHERIT");
    }

    #[test]
    fn database_acl_is_replaced_as_on_live() {
        assert!(acl_sql("d", &None).is_empty());
        let acl = Some(vec![(None, "CONNECT".to_string()), (Some("mig rator".to_string()), "CREATE".to_string())]);
        assert_eq!(
            acl_sql("d", &acl),
            [
                "REVOKE ALL ON DATABASE \"d\" FROM PUBLIC",
                "GRANT CONNECT ON DATABASE \"d\" TO PUBLIC",
                "GRANT CREATE ON DATABASE \"d\" TO \"mig rator\""
            ]
        );
    }
}
