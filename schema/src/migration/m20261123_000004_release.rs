//! Release and routing: artifacts, deployments, allocations, route owners, the route change
//! log and edge acknowledgements.

use sea_orm_migration::{prelude::*, schema::*};

use super::m20261123_000001_tenancy::{Apps, Environments, Workspaces};
use super::m20261123_000002_operations::Operations;
use super::m20261123_000003_topology::{Cells, Regions, Runners};
use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Artifacts {
    Table,
    Digest,
    SizeBytes,
    Manifest,
    StoreUri,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
    WorkspaceId,
    AppId,
    EnvironmentId,
    ArtifactDigest,
    Source,
    Stage,
    OperationId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Allocations {
    Table,
    Id,
    DeploymentId,
    ArtifactDigest,
    RunnerId,
    RegionId,
    CellId,
    Generation,
    Desired,
    Stage,
    Address,
    ExitStatus,
    LastReportAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RouteOwners {
    Table,
    RouteKey,
    EnvironmentId,
    DeploymentId,
    ArtifactDigest,
    RegionId,
    CellId,
    Epoch,
    OperationId,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RouteChanges {
    Table,
    Seq,
    RouteKey,
    Epoch,
    DeploymentId,
    ArtifactDigest,
    OperationId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EdgeAcks {
    Table,
    EdgeId,
    AckedSeq,
    AckedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let artifacts = Table::create()
            .table(Artifacts::Table)
            .col(string(Artifacts::Digest).primary_key())
            .col(big_integer(Artifacts::SizeBytes))
            .col(json_binary(Artifacts::Manifest))
            .col(string(Artifacts::StoreUri))
            .col(timestamp_with_time_zone(Artifacts::CreatedAt))
            .to_owned();
        let deployments = Table::create()
            .table(Deployments::Table)
            .col(pk_uuid(Deployments::Id))
            .col(uuid(Deployments::WorkspaceId))
            .col(uuid(Deployments::AppId))
            .col(uuid(Deployments::EnvironmentId))
            .col(string_null(Deployments::ArtifactDigest))
            .col(json_binary(Deployments::Source))
            .col(string(Deployments::Stage))
            .col(uuid_null(Deployments::OperationId))
            .col(timestamp_with_time_zone(Deployments::CreatedAt))
            .col(timestamp_with_time_zone(Deployments::UpdatedAt))
            .foreign_key(&mut fk(
                Deployments::Table,
                Deployments::WorkspaceId,
                Workspaces::Table,
                Workspaces::Id,
            ))
            .foreign_key(&mut fk(
                Deployments::Table,
                Deployments::AppId,
                Apps::Table,
                Apps::Id,
            ))
            .foreign_key(&mut fk(
                Deployments::Table,
                Deployments::EnvironmentId,
                Environments::Table,
                Environments::Id,
            ))
            .foreign_key(&mut fk(
                Deployments::Table,
                Deployments::ArtifactDigest,
                Artifacts::Table,
                Artifacts::Digest,
            ))
            .foreign_key(&mut fk(
                Deployments::Table,
                Deployments::OperationId,
                Operations::Table,
                Operations::Id,
            ))
            .to_owned();
        let allocations = Table::create()
            .table(Allocations::Table)
            .col(pk_uuid(Allocations::Id))
            .col(uuid(Allocations::DeploymentId))
            .col(string(Allocations::ArtifactDigest))
            .col(uuid_null(Allocations::RunnerId))
            .col(uuid(Allocations::RegionId))
            .col(uuid(Allocations::CellId))
            .col(big_integer(Allocations::Generation))
            .col(string(Allocations::Desired))
            .col(string(Allocations::Stage))
            .col(string_null(Allocations::Address))
            .col(string_null(Allocations::ExitStatus))
            .col(timestamp_with_time_zone_null(Allocations::LastReportAt))
            .col(timestamp_with_time_zone(Allocations::CreatedAt))
            .col(timestamp_with_time_zone(Allocations::UpdatedAt))
            .foreign_key(&mut fk(
                Allocations::Table,
                Allocations::DeploymentId,
                Deployments::Table,
                Deployments::Id,
            ))
            .foreign_key(&mut fk(
                Allocations::Table,
                Allocations::ArtifactDigest,
                Artifacts::Table,
                Artifacts::Digest,
            ))
            .foreign_key(&mut fk(
                Allocations::Table,
                Allocations::RunnerId,
                Runners::Table,
                Runners::Id,
            ))
            .foreign_key(&mut fk(
                Allocations::Table,
                Allocations::RegionId,
                Regions::Table,
                Regions::Id,
            ))
            .foreign_key(&mut fk(
                Allocations::Table,
                Allocations::CellId,
                Cells::Table,
                Cells::Id,
            ))
            .to_owned();
        let route_owners = Table::create()
            .table(RouteOwners::Table)
            .col(string(RouteOwners::RouteKey).primary_key())
            .col(uuid(RouteOwners::EnvironmentId))
            .col(uuid(RouteOwners::DeploymentId))
            .col(string(RouteOwners::ArtifactDigest))
            .col(uuid(RouteOwners::RegionId))
            .col(uuid(RouteOwners::CellId))
            .col(big_integer(RouteOwners::Epoch))
            .col(uuid_null(RouteOwners::OperationId))
            .col(timestamp_with_time_zone(RouteOwners::UpdatedAt))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::EnvironmentId,
                Environments::Table,
                Environments::Id,
            ))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::DeploymentId,
                Deployments::Table,
                Deployments::Id,
            ))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::ArtifactDigest,
                Artifacts::Table,
                Artifacts::Digest,
            ))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::RegionId,
                Regions::Table,
                Regions::Id,
            ))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::CellId,
                Cells::Table,
                Cells::Id,
            ))
            .foreign_key(&mut fk(
                RouteOwners::Table,
                RouteOwners::OperationId,
                Operations::Table,
                Operations::Id,
            ))
            .to_owned();
        let route_changes = Table::create()
            .table(RouteChanges::Table)
            .col(big_pk_auto(RouteChanges::Seq))
            .col(string(RouteChanges::RouteKey))
            .col(big_integer(RouteChanges::Epoch))
            .col(uuid(RouteChanges::DeploymentId))
            .col(string(RouteChanges::ArtifactDigest))
            .col(uuid_null(RouteChanges::OperationId))
            .col(timestamp_with_time_zone(RouteChanges::CreatedAt))
            .foreign_key(&mut fk(
                RouteChanges::Table,
                RouteChanges::DeploymentId,
                Deployments::Table,
                Deployments::Id,
            ))
            .foreign_key(&mut fk(
                RouteChanges::Table,
                RouteChanges::ArtifactDigest,
                Artifacts::Table,
                Artifacts::Digest,
            ))
            .foreign_key(&mut fk(
                RouteChanges::Table,
                RouteChanges::OperationId,
                Operations::Table,
                Operations::Id,
            ))
            .to_owned();
        let edge_acks = Table::create()
            .table(EdgeAcks::Table)
            .col(string(EdgeAcks::EdgeId).primary_key())
            .col(big_integer(EdgeAcks::AckedSeq))
            .col(timestamp_with_time_zone(EdgeAcks::AckedAt))
            .to_owned();

        create_all(
            manager,
            vec![
                artifacts,
                deployments,
                allocations,
                route_owners,
                route_changes,
                edge_acks,
            ],
            vec![
                index(
                    Deployments::Table,
                    [Deployments::EnvironmentId, Deployments::CreatedAt],
                    false,
                ),
                index(Deployments::Table, [Deployments::AppId], false),
                index(Allocations::Table, [Allocations::DeploymentId], false),
                index(Allocations::Table, [Allocations::RunnerId], false),
                index(
                    RouteChanges::Table,
                    [RouteChanges::RouteKey, RouteChanges::Epoch],
                    true,
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(
            manager,
            [
                EdgeAcks::Table.into_iden(),
                RouteChanges::Table.into_iden(),
                RouteOwners::Table.into_iden(),
                Allocations::Table.into_iden(),
                Deployments::Table.into_iden(),
                Artifacts::Table.into_iden(),
            ],
        )
        .await
    }
}
