//! Every statement node of PostgreSQL 15's grammar, with the kind rules name it by and what
//! the relations it names (outside any query inside it) are to it. A node missing here is a
//! statement the classifier does not know, and it is refused rather than guessed.

use super::StatementKind as K;

/// What a statement does to the relations it names directly (a query inside it, such as the
/// `SELECT` of a `CREATE VIEW`, reads its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Read,
    Write,
}

/// The kind and relation role of a top-level statement node, by its name in the parse tree.
#[rustfmt::skip]
pub(crate) fn statement(node: &str) -> Option<(K, Role)> {
    use Role::{Read as R, Write as W};
    Some(match node {
        "SelectStmt" => (K::Select, R),
        "InsertStmt" => (K::Insert, W),
        "UpdateStmt" => (K::Update, W),
        "DeleteStmt" => (K::Delete, W),
        "MergeStmt" => (K::Merge, W),
        "CopyStmt" => (K::Copy, R),
        "ExplainStmt" => (K::Explain, R),
        "CallStmt" => (K::Call, R),
        "DoStmt" => (K::Do, R),
        "TransactionStmt" => (K::Transaction, R),
        "VariableSetStmt" | "DiscardStmt" | "ConstraintsSetStmt" => (K::Set, R),
        "VariableShowStmt" => (K::Show, R),
        "PrepareStmt" => (K::Prepare, R),
        "ExecuteStmt" => (K::Execute, R),
        "DeallocateStmt" => (K::Deallocate, R),
        "LockStmt" => (K::Lock, R),
        "ListenStmt" | "UnlistenStmt" | "NotifyStmt" => (K::Notify, R),
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt"
        | "RefreshMatViewStmt" => (K::Maintenance, W),
        "TruncateStmt" => (K::Truncate, W),
        "GrantStmt" => (K::Grant, R),
        "GrantRoleStmt" | "AlterDefaultPrivilegesStmt" => (K::Grant, R),
        "DropStmt" | "DropRoleStmt" | "DropOwnedStmt" | "DropSubscriptionStmt"
        | "DropTableSpaceStmt" | "DropUserMappingStmt" | "DropdbStmt" => (K::Drop, W),
        "CreateStmt" | "CreateTableAsStmt" | "ViewStmt" | "IndexStmt" | "CreateSeqStmt"
        | "CreateFunctionStmt" | "CreateTrigStmt" | "CreateRoleStmt" | "CreateSchemaStmt"
        | "CreatedbStmt" | "CreateDomainStmt" | "CreateEnumStmt" | "CreateRangeStmt"
        | "CompositeTypeStmt" | "DefineStmt" | "CreateExtensionStmt" | "CreateCastStmt"
        | "CreateConversionStmt" | "CreateOpClassStmt" | "CreateOpFamilyStmt"
        | "CreatePLangStmt" | "CreatePolicyStmt" | "CreateStatsStmt" | "CreateFdwStmt"
        | "CreateForeignServerStmt" | "CreateForeignTableStmt" | "CreateUserMappingStmt"
        | "CreateTableSpaceStmt" | "CreateEventTrigStmt" | "CreateTransformStmt"
        | "CreateAmStmt" | "CreatePublicationStmt" | "CreateSubscriptionStmt" | "RuleStmt"
        | "ImportForeignSchemaStmt" => (K::Create, W),
        "AlterTableStmt" | "AlterTableMoveAllStmt" | "AlterDomainStmt" | "AlterEnumStmt"
        | "AlterFunctionStmt" | "AlterRoleStmt" | "AlterRoleSetStmt" | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt" | "AlterDatabaseRefreshCollStmt" | "AlterSystemStmt"
        | "AlterSeqStmt" | "AlterOwnerStmt" | "AlterObjectSchemaStmt"
        | "AlterObjectDependsStmt" | "AlterOperatorStmt" | "AlterTypeStmt"
        | "AlterCollationStmt" | "AlterExtensionStmt" | "AlterExtensionContentsStmt"
        | "AlterFdwStmt" | "AlterForeignServerStmt" | "AlterUserMappingStmt"
        | "AlterTableSpaceOptionsStmt" | "AlterOpFamilyStmt" | "AlterTSDictionaryStmt"
        | "AlterTSConfigurationStmt" | "AlterEventTrigStmt" | "AlterPolicyStmt"
        | "AlterPublicationStmt" | "AlterSubscriptionStmt" | "AlterStatsStmt"
        | "RenameStmt" | "ReplicaIdentityStmt" | "ReassignOwnedStmt" | "CommentStmt"
        | "SecLabelStmt" => (K::Alter, W),
        // Cursors and everything else a rule must name as `other` to allow.
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => (K::Other, R),
        // Loads a shared library into the backend: not to be allowed with `other`.
        "LoadStmt" => (K::Load, W),
        // PL/pgSQL-only nodes (PLAssignStmt, ReturnStmt) and anything newer: not a statement
        // the gateway knows.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nodes_are_not_guessed() {
        for node in ["PLAssignStmt", "ReturnStmt", "RawStmt", "SomethingNew"] {
            assert_eq!(statement(node), None, "{node}");
        }
        assert_eq!(statement("SelectStmt"), Some((K::Select, Role::Read)));
    }
}
