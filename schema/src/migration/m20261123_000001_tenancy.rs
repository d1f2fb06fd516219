//! Tenancy: workspaces, users, projects, apps, environments, API tokens and grants.

use sea_orm_migration::{prelude::*, schema::*};

use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
pub(super) enum Workspaces {
    Table,
    Id,
    Name,
    DisplayName,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Users {
    Table,
    Id,
    Email,
    DisplayName,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Projects {
    Table,
    Id,
    WorkspaceId,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Apps {
    Table,
    Id,
    WorkspaceId,
    ProjectId,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Environments {
    Table,
    Id,
    WorkspaceId,
    AppId,
    Name,
    Kind,
    RequiresApproval,
    ScaleToZero,
    WakeBudgetMs,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    UserId,
    AppId,
    Kind,
    Name,
    TokenHash,
    Prefix,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Grants {
    Table,
    Id,
    WorkspaceId,
    UserId,
    Role,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let workspaces = Table::create()
            .table(Workspaces::Table)
            .col(pk_uuid(Workspaces::Id))
            .col(string_uniq(Workspaces::Name))
            .col(string(Workspaces::DisplayName))
            .col(timestamp_with_time_zone(Workspaces::CreatedAt))
            .to_owned();
        let users = Table::create()
            .table(Users::Table)
            .col(pk_uuid(Users::Id))
            .col(string_uniq(Users::Email))
            .col(string(Users::DisplayName))
            .col(timestamp_with_time_zone(Users::CreatedAt))
            .to_owned();
        let projects = Table::create()
            .table(Projects::Table)
            .col(pk_uuid(Projects::Id))
            .col(uuid(Projects::WorkspaceId))
            .col(string(Projects::Name))
            .col(timestamp_with_time_zone(Projects::CreatedAt))
            .foreign_key(&mut fk(
                Projects::Table,
                Projects::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .to_owned();
        let apps = Table::create()
            .table(Apps::Table)
            .col(pk_uuid(Apps::Id))
            .col(uuid(Apps::WorkspaceId))
            .col(uuid(Apps::ProjectId))
            .col(string(Apps::Name))
            .col(timestamp_with_time_zone(Apps::CreatedAt))
            .foreign_key(&mut fk(
                Apps::Table,
                Apps::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .foreign_key(&mut fk(
                Apps::Table,
                Apps::ProjectId,
                Projects::Table,
                Projects::Id,
            ))
            .to_owned();
        let environments = Table::create()
            .table(Environments::Table)
            .col(pk_uuid(Environments::Id))
            .col(uuid(Environments::WorkspaceId))
            .col(uuid(Environments::AppId))
            .col(string(Environments::Name))
            .col(string(Environments::Kind))
            .col(boolean(Environments::RequiresApproval).default(false))
            .col(boolean(Environments::ScaleToZero).default(false))
            .col(big_integer(Environments::WakeBudgetMs).default(10_000))
            .col(timestamp_with_time_zone(Environments::CreatedAt))
            .foreign_key(&mut fk(
                Environments::Table,
                Environments::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .foreign_key(&mut fk(
                Environments::Table,
                Environments::AppId,
                Apps::Table,
                Apps::Id,
            ))
            .to_owned();
        // A token belongs to a human user or to an app's runtime identity, never both, so a
        // runtime identity can never act as a user on platform tenancy.
        let token_owner = Expr::col(ApiTokens::Kind)
            .eq("user")
            .and(Expr::col(ApiTokens::UserId).is_not_null())
            .and(Expr::col(ApiTokens::AppId).is_null())
            .or(Expr::col(ApiTokens::Kind)
                .eq("runtime")
                .and(Expr::col(ApiTokens::UserId).is_null())
                .and(Expr::col(ApiTokens::AppId).is_not_null()));
        let api_tokens = Table::create()
            .table(ApiTokens::Table)
            .col(pk_uuid(ApiTokens::Id))
            .col(uuid_null(ApiTokens::UserId))
            .col(uuid_null(ApiTokens::AppId))
            .col(string(ApiTokens::Kind))
            .col(string(ApiTokens::Name))
            .col(string_uniq(ApiTokens::TokenHash))
            .col(string(ApiTokens::Prefix))
            .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
            .col(timestamp_with_time_zone_null(ApiTokens::LastUsedAt))
            .col(timestamp_with_time_zone_null(ApiTokens::RevokedAt))
            .check(Check::named("ck_api_tokens_owner", token_owner))
            .foreign_key(
                fk(ApiTokens::Table, ApiTokens::UserId, Users::Table, Users::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                fk(ApiTokens::Table, ApiTokens::AppId, Apps::Table, Apps::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();
        let grants = Table::create()
            .table(Grants::Table)
            .col(pk_uuid(Grants::Id))
            .col(uuid(Grants::WorkspaceId))
            .col(uuid(Grants::UserId))
            .col(string(Grants::Role))
            .col(timestamp_with_time_zone(Grants::CreatedAt))
            .foreign_key(
                fk(
                    Grants::Table,
                    Grants::WorkspaceId,
                    Workspaces::Table,
                    Workspaces::Id,
                )
                .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                fk(Grants::Table, Grants::UserId, Users::Table, Users::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();

        create_all(
            manager,
            vec![
                workspaces,
                users,
                projects,
                apps,
                environments,
                api_tokens,
                grants,
            ],
            vec![
                index(Grants::Table, [Grants::WorkspaceId, Grants::UserId], true),
                index(Grants::Table, [Grants::UserId], false),
                index(
                    Projects::Table,
                    [Projects::WorkspaceId, Projects::Name],
                    true,
                ),
                index(Apps::Table, [Apps::ProjectId, Apps::Name], true),
                index(Apps::Table, [Apps::WorkspaceId], false),
                index(
                    Environments::Table,
                    [Environments::AppId, Environments::Name],
                    true,
                ),
                index(ApiTokens::Table, [ApiTokens::UserId], false),
                index(ApiTokens::Table, [ApiTokens::AppId], false),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(
            manager,
            [
                Grants::Table.into_iden(),
                ApiTokens::Table.into_iden(),
                Environments::Table.into_iden(),
                Apps::Table.into_iden(),
                Projects::Table.into_iden(),
                Users::Table.into_iden(),
                Workspaces::Table.into_iden(),
            ],
        )
        .await
    }
}
