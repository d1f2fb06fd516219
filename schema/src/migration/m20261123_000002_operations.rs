//! Operations and their stage records, the audit log and idempotency records.

use sea_orm_migration::{prelude::*, schema::*};

use super::m20261123_000001_tenancy::Workspaces;
use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
pub(super) enum Operations {
    Table,
    Id,
    WorkspaceId,
    Kind,
    Actor,
    TargetType,
    TargetId,
    Status,
    CurrentStage,
    WorkflowId,
    Error,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OperationStages {
    Table,
    Id,
    OperationId,
    Seq,
    Stage,
    Attempt,
    RecordKey,
    EnteredAt,
    Evidence,
    Error,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    WorkspaceId,
    Actor,
    Action,
    TargetType,
    TargetId,
    OperationId,
    Detail,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    Id,
    Scope,
    Key,
    RequestHash,
    StatusCode,
    ResponseBody,
    CreatedAt,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let operations = Table::create()
            .table(Operations::Table)
            .col(pk_uuid(Operations::Id))
            .col(uuid_null(Operations::WorkspaceId))
            .col(string(Operations::Kind))
            .col(string(Operations::Actor))
            .col(string(Operations::TargetType))
            .col(string(Operations::TargetId))
            .col(string(Operations::Status))
            .col(string(Operations::CurrentStage))
            .col(string_uniq(Operations::WorkflowId))
            .col(text_null(Operations::Error))
            .col(timestamp_with_time_zone(Operations::CreatedAt))
            .col(timestamp_with_time_zone(Operations::UpdatedAt))
            .foreign_key(&mut fk(
                Operations::Table,
                Operations::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .to_owned();
        let operation_stages = Table::create()
            .table(OperationStages::Table)
            .col(big_pk_auto(OperationStages::Id))
            .col(uuid(OperationStages::OperationId))
            .col(integer(OperationStages::Seq))
            .col(string(OperationStages::Stage))
            .col(integer(OperationStages::Attempt))
            .col(string(OperationStages::RecordKey))
            .col(timestamp_with_time_zone(OperationStages::EnteredAt))
            .col(json_binary(OperationStages::Evidence))
            .col(text_null(OperationStages::Error))
            .foreign_key(
                fk(
                    OperationStages::Table,
                    OperationStages::OperationId,
                    Operations::Table,
                    Operations::Id,
                )
                .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();
        let audit_log = Table::create()
            .table(AuditLog::Table)
            .col(pk_uuid(AuditLog::Id))
            .col(uuid_null(AuditLog::WorkspaceId))
            .col(string(AuditLog::Actor))
            .col(string(AuditLog::Action))
            .col(string(AuditLog::TargetType))
            .col(string(AuditLog::TargetId))
            .col(uuid_null(AuditLog::OperationId))
            .col(json_binary(AuditLog::Detail))
            .col(timestamp_with_time_zone(AuditLog::CreatedAt))
            .foreign_key(&mut fk(
                AuditLog::Table,
                AuditLog::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .foreign_key(&mut fk(
                AuditLog::Table,
                AuditLog::OperationId,
                Operations::Table,
                Operations::Id,
            ))
            .to_owned();
        let idempotency_records = Table::create()
            .table(IdempotencyRecords::Table)
            .col(pk_uuid(IdempotencyRecords::Id))
            .col(string(IdempotencyRecords::Scope))
            .col(string(IdempotencyRecords::Key))
            .col(string(IdempotencyRecords::RequestHash))
            .col(integer_null(IdempotencyRecords::StatusCode))
            .col(blob_null(IdempotencyRecords::ResponseBody))
            .col(timestamp_with_time_zone(IdempotencyRecords::CreatedAt))
            .col(timestamp_with_time_zone(IdempotencyRecords::ExpiresAt))
            .to_owned();

        create_all(
            manager,
            vec![operations, operation_stages, audit_log, idempotency_records],
            vec![
                index(
                    Operations::Table,
                    [Operations::WorkspaceId, Operations::CreatedAt],
                    false,
                ),
                index(Operations::Table, [Operations::Status], false),
                index(Operations::Table, [Operations::TargetId], false),
                index(
                    OperationStages::Table,
                    [OperationStages::OperationId, OperationStages::Seq],
                    true,
                ),
                index(
                    OperationStages::Table,
                    [OperationStages::OperationId, OperationStages::RecordKey],
                    true,
                ),
                index(
                    AuditLog::Table,
                    [AuditLog::WorkspaceId, AuditLog::CreatedAt],
                    false,
                ),
                index(
                    IdempotencyRecords::Table,
                    [IdempotencyRecords::Scope, IdempotencyRecords::Key],
                    true,
                ),
                index(
                    IdempotencyRecords::Table,
                    [IdempotencyRecords::ExpiresAt],
                    false,
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(
            manager,
            [
                IdempotencyRecords::Table.into_iden(),
                AuditLog::Table.into_iden(),
                OperationStages::Table.into_iden(),
                Operations::Table.into_iden(),
            ],
        )
        .await
    }
}
